"""The exported SavedModel reloads with tf.saved_model.load and equals the in-process (unfolded) model through
every signature (encoded bytes, uint8 pixels, preprocessed float pixels), with evaluation preprocessing and
EMA weights by default; the keras format gives keras.applications the checkpoint's logits."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet
import input as data
from efficientnet.serving import with_trained_like_statistics
from input import testdata
from loops.checkpoints import RunSpec, make_checkpoint
from loops.ema import ExponentialMovingAverage
from loops.serving.config import ExportConfig
from loops.serving.export import export
from loops.restore import restore

# The bound export.py's self-check holds float32 artifacts to (--max_probability_difference): the folded network
# rounds differently (w * s, not (x * w) * s), which shows most in probabilities between 0 and 1 far from 0.1,
# as the tiny checkpoint gives these off-distribution images.
PROBS_ATOL = ExportConfig.__dataclass_fields__["max_probability_difference"].default


@pytest.mark.slow
def test_exported_savedmodel_round_trips(tiny_checkpoint, tmp_path):
    out = tmp_path / "saved"
    info = export(ExportConfig(ckpt=tiny_checkpoint, output=str(out), top_k=3, formats=("savedmodel",)))
    assert info["weights"] == "ema"
    assert json.loads((out / "export_info.json").read_text())["image_size"] == 32

    arrays = [testdata.image_array(7, 48, 64), testdata.image_array(8, 48, 64)]
    pngs = [testdata.encode(a, "png") for a in arrays]
    jpg = testdata.encode(testdata.image_array(9, 33, 57), "jpg")

    r = restore(tiny_checkpoint)
    r.use_ema_weights()
    x = tf.stack([data.preprocess_for_eval(tf.constant(b), 32, r.spec.preprocessing) for b in pngs + [jpg]])
    expected = tf.nn.softmax(r.model(x, training=False)).numpy()

    loaded = tf.saved_model.load(str(out))
    assert set(loaded.signatures) == {"serving_default", "serving_uint8", "serving_pixels"}
    # The signatures serve the frozen, BatchNorm-folded network: weights are graph constants, not variables.
    stored = [name for name, _ in tf.train.list_variables(str(out / "variables" / "variables"))]
    assert stored == ["_CHECKPOINTABLE_OBJECT_GRAPH"]
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(pngs + [jpg]))
    by_pixels = loaded.signatures["serving_uint8"](images=tf.constant(np.stack(arrays)))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(), expected, rtol=0, atol=PROBS_ATOL)
    np.testing.assert_allclose(by_pixels["probabilities"].numpy(), expected[:2], rtol=0, atol=PROBS_ATOL)
    preprocessed = loaded.signatures["serving_pixels"](images=x)
    np.testing.assert_allclose(preprocessed["probabilities"].numpy(), expected, rtol=0, atol=PROBS_ATOL)
    top = np.argsort(-expected, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(by_bytes["top_k_class_ids"].numpy(), top)
    np.testing.assert_allclose(by_bytes["top_k_probabilities"].numpy(),
                               np.take_along_axis(expected, top, 1), rtol=0, atol=PROBS_ATOL)
    assert [n.decode() for n in by_bytes["top_k_class_names"].numpy()[0]] == [str(c) for c in top[0]]


@pytest.fixture(scope="module")
def b0_checkpoint(tmp_path_factory):
    """A model_dir as train.py leaves it (run_spec.json, a checkpoint with EMA shadows) holding B0 for the demo's
    10 classes at 32 px, with trained-like BatchNorm statistics and EMA shadows that differ from the raw weights.
    keras.applications builds only the published architectures, which tiny_checkpoint's network is not."""
    model = with_trained_like_statistics(efficientnet.build_model("b0", 10), seed=15)
    ema = ExponentialMovingAverage(model, 0.9, tf.distribute.get_strategy())
    rng = np.random.default_rng(16)
    for shadow in ema.shadows:
        shadow.assign(shadow * rng.uniform(0.7, 1.3, shadow.shape))
    model_dir = tmp_path_factory.mktemp("b0_run")
    RunSpec("b0", 10, {}, tuple(str(i) for i in range(10)), 32).save(str(model_dir))
    make_checkpoint(model, ema=ema).save(str(model_dir / "ckpt"))  # ckpt-1, and the 'checkpoint' index file
    return str(model_dir)


@pytest.mark.slow
def test_keras_format_gives_keras_applications_the_checkpoints_ema_logits(b0_checkpoint, tmp_path, capsys):
    """--format keras: keras.applications.EfficientNetB0(weights=<file>) computes the checkpoint's EMA logits
    (the export checked it too, and says how to load the file). In process: export.py's command line is
    tested in test_export_formats.py."""
    images = tf.random.stateless_uniform((3, 32, 32, 3), (4, 5), maxval=255.0)
    r = restore(b0_checkpoint)
    raw = r.model(images, training=False).numpy()
    r.use_ema_weights()
    expected = r.model(images, training=False).numpy()
    assert np.max(np.abs(raw - expected)) / np.max(np.abs(expected)) > 1e-2  # the EMA weights are their own
    out = tmp_path / "export"
    info = export(ExportConfig(ckpt=b0_checkpoint, formats=("keras",), output=str(out)))
    assert info["weights"] == "ema"
    assert "self-check keras (keras_weights.h5, keras.applications" in capsys.readouterr().out
    assert ("keras.applications.EfficientNetB0(weights='keras_weights.h5', classes=10"
            in info["artifacts"]["keras"]["input"])
    model = keras.applications.EfficientNetB0(weights=str(out / "keras_weights.h5"), classes=10,
                                              input_shape=(32, 32, 3), classifier_activation=None)
    got = model(images, training=False).numpy()
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-4


def test_export_refuses_a_non_empty_output_and_a_missing_checkpoint(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(ExportConfig(ckpt="unused", output=str(tmp_path), formats=("savedmodel",)))
    with pytest.raises(FileNotFoundError, match="--ckpt"):
        export(ExportConfig(ckpt=str(tmp_path / "none"), output=str(tmp_path / "out"), formats=("savedmodel",)))
