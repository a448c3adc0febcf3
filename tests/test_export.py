"""The exported SavedModel reloads with tf.saved_model.load and equals the in-process (unfolded) model through
every signature (encoded bytes, uint8 pixels, preprocessed float pixels), with evaluation preprocessing and
EMA weights by default."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import input as data
from input import testdata
from loops.serving.config import ExportConfig
from loops.serving.export import export
from loops.restore import restore


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
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(by_pixels["probabilities"].numpy(), expected[:2], rtol=1e-5, atol=1e-7)
    preprocessed = loaded.signatures["serving_pixels"](images=x)
    np.testing.assert_allclose(preprocessed["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-7)
    top = np.argsort(-expected, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(by_bytes["top_k_class_ids"].numpy(), top)
    np.testing.assert_allclose(by_bytes["top_k_probabilities"].numpy(),
                               np.take_along_axis(expected, top, 1), rtol=1e-5)
    assert [n.decode() for n in by_bytes["top_k_class_names"].numpy()[0]] == [str(c) for c in top[0]]


@pytest.mark.slow
def test_export_py_keras_format_gives_keras_applications_our_logits(tiny_checkpoint, run_script, tmp_path):
    """export.py --format keras: keras.applications.EfficientNetB0(weights=<file>) computes the checkpoint's
    EMA logits (the export checked it too, and says how to load the file)."""
    r = restore(tiny_checkpoint)
    r.use_ema_weights()
    images = tf.random.stateless_uniform((3, 32, 32, 3), (4, 5), maxval=255.0)
    expected = r.model(images, training=False).numpy()
    out = tmp_path / "export"
    proc = run_script("export.py", "--ckpt", tiny_checkpoint, "--format", "keras", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "self-check keras (keras_weights.h5, keras.applications" in proc.stdout
    assert "keras.applications.EfficientNetB0(weights='keras_weights.h5', classes=10" in proc.stdout
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
