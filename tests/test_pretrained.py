"""Foreign EfficientNet weights in our model give the source model's logits (efficientnet/pretrained.py).

Each source model is built here with random, trained-looking BatchNorm statistics and biases: Keras
Applications' own EfficientNet (written by Keras in its legacy .h5 and its Keras 3 .weights.h5 layout), and
from it a tensorflow/tpu checkpoint and a timm safetensors file written under those projects' exact
variable names and layouts. Logits are compared on two real photographs (tests/data: scikit-learn's sample JPEGs).
"""

import os
import pathlib
import re

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
# Private Keras modules, for want of public ones: Keras 3's public save_weights writes only the .weights.h5
# layout, while the released efficientnetb<k>.h5 files are in the legacy layout that legacy_h5_format alone
# writes; and EfficientNetB0(weights="imagenet") downloads through keras_efficientnet's own reference to
# file_utils.get_file, which is the only place to hand it a local file (no network here; a file put in the
# Keras cache is re-downloaded because its hash differs from the released one).
from keras.src.applications import efficientnet as keras_efficientnet
from keras.src.legacy.saving import legacy_h5_format
from PIL import Image
from safetensors.numpy import save_file

import efficientnet
from efficientnet import pretrained
from efficientnet.serving import with_trained_like_statistics
from loops.checkpoints import make_checkpoint
from loops.ema import ExponentialMovingAverage

DATA = pathlib.Path(__file__).resolve().parent / "data"
CLASSES = 7
SIZE = 66  # even input, odd after the stem: both of TensorFlow's 'same' padding cases are exercised
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
TOLERANCE = 1e-4


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def assert_close(ours, reference, what):
    diff = rel_diff(ours, reference)
    print(f"\n{what}: relative max difference {diff:.2e}")
    assert diff < TOLERANCE, f"{what}: relative max difference {diff:.3g}"
    return diff


def one_line_error(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module", autouse=True)
def seeded():
    """Keras initialises kernels randomly: seeded, every run builds the same networks."""
    keras.utils.set_random_seed(14)


@pytest.fixture(scope="module")
def images():
    """tests/data/china.jpg and flower.jpg, decoded by Pillow, resized to SIZE px: float pixels in [0, 255]."""
    photos = np.stack([np.asarray(Image.open(DATA / name)) for name in ("china.jpg", "flower.jpg")]).astype(np.float32)
    return tf.image.resize(photos, (SIZE, SIZE), antialias=True).numpy()


def keras_source(variant, *, include_top=True, variance=None, mean=IMAGENET_MEAN, seed=0):
    """keras.applications.EfficientNet<variant> with trained-like weights and the given Normalization."""
    build = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    model = build(weights=None, include_top=include_top, classes=CLASSES, input_shape=(SIZE, SIZE, 3),
                  classifier_activation=None)
    with_trained_like_statistics(model, seed=seed)
    if include_top:
        bias = model.get_layer("predictions").bias
        bias.assign(np.random.default_rng(seed).normal(0, 0.1, bias.shape))
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    norm.set_weights([mean, IMAGENET_STD ** 2 if variance is None else variance, np.array(0)])
    norm.finalize_state()  # Normalization computes from a snapshot of its variables taken here
    return model


def save_legacy_h5(model, path):
    """The HDF5 layout Keras writes for `*.h5` weights (and the released efficientnetb<k>.h5 files have)."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return str(path)


# Not std^2 (ours) nor the released files' std: the stem must absorb the difference (docs/pretrained.md).
ODD_VARIANCE = (IMAGENET_STD * np.array([0.8, 1.1, 1.3], np.float32)) ** 2


def set_file_variance(path, variance):
    """Rewrites the Normalization variance inside a Keras weights file (either layout)."""
    with h5py.File(path, "r+") as f:
        if "layers" in f:
            f["layers/normalization/vars/1"][...] = variance
        else:
            text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731 (h5py version-dependent)
            layer = next(text(n) for n in f.attrs["layer_names"] if text(n).startswith("normalization"))
            f[layer][text(f[layer].attrs["weight_names"][1])][...] = variance


@pytest.fixture(scope="module")
def sources(tmp_path_factory, images):
    """Keras Applications B0 and B2 (7 classes) normalising as ours does, so their logits are also those
    of the tensorflow/tpu and timm networks holding the same weights; and Keras files of them whose
    Normalization has ODD_VARIANCE, with the logits Keras computes from those files."""
    out = {}
    folder = tmp_path_factory.mktemp("keras_sources")
    for variant, seed in (("b0", 1), ("b2", 2)):
        model = keras_source(variant, seed=seed)
        out[variant] = model
        out[f"{variant}_logits"] = logits(model, images)
        out[f"{variant}_h5"] = save_legacy_h5(model, folder / f"efficientnet{variant}.h5")
        out[f"{variant}_v3"] = str(folder / f"efficientnet{variant}.weights.h5")
        model.save_weights(out[f"{variant}_v3"])
        for path in (out[f"{variant}_h5"], out[f"{variant}_v3"]):
            set_file_variance(path, ODD_VARIANCE)
        # What Keras itself builds from that file is the reference for the Keras-file tests.
        from_file = getattr(keras.applications, f"EfficientNet{variant.upper()}")(
            weights=out[f"{variant}_h5"], classes=CLASSES, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
        out[f"{variant}_file_logits"] = logits(from_file, images)
    return out


@pytest.fixture(scope="module")
def ours():
    return {variant: efficientnet.build_model(variant, CLASSES) for variant in ("b0", "b2")}


def logits(model, images):
    return model(images, training=False).numpy()


# ---------------------------------------------------------------------------------------------------------
# Keras Applications


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_keras_legacy_h5_gives_keras_logits(sources, ours, images, variant):
    path = sources[f"{variant}_h5"]
    assert pretrained.detect_format(path) == "keras_h5"
    report = pretrained.load_into(ours[variant], path)
    assert report.format == "keras_h5" and report.head == "loaded" and report.skipped == ()
    assert report.assigned == len(ours[variant].weights)
    assert report.stem_rescaled  # the file's variance is not our std^2
    np.testing.assert_allclose(report.source_std, np.sqrt(ODD_VARIANCE) * 255, rtol=1e-5)
    assert_close(logits(ours[variant], images), sources[f"{variant}_file_logits"], f"keras_h5 {variant}")


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_keras_v3_weights_give_keras_logits(sources, ours, images, variant):
    path = sources[f"{variant}_v3"]
    assert pretrained.detect_format(path) == "keras_v3"
    report = pretrained.load_into(ours[variant], path)
    assert report.format == "keras_v3" and report.assigned == len(ours[variant].weights)
    assert report.stem_rescaled
    assert_close(logits(ours[variant], images), sources[f"{variant}_file_logits"], f"keras_v3 {variant}")


def test_keras_v3_file_without_layer_names_is_matched_by_layout(sources, ours, images, tmp_path):
    """Keras before 3.10 wrote no layer names: groups are conv2d_<n>, batch_normalization_<n>, ..."""
    path = tmp_path / "old.weights.h5"
    with h5py.File(sources["b2_v3"], "r") as src, h5py.File(path, "w") as dst:
        for name in src:
            src.copy(name, dst)

        def strip(_, obj):
            if isinstance(obj, h5py.Group) and "name" in obj.attrs:
                del obj.attrs["name"]
        dst.visititems(strip)
    pretrained.load_into(ours["b2"], str(path))
    assert_close(logits(ours["b2"], images), sources["b2_file_logits"], "keras_v3 without names b2")


def test_released_keras_file_reads_as_weights_imagenet(ours, images, tmp_path, monkeypatch):
    """A released efficientnetb0_notop.h5 stores std as variance; its network was trained on (x - mean)/std,
    which is what EfficientNetB0(weights="imagenet") computes (weights=<file> would not)."""
    source = keras_source("b0", include_top=False, variance=IMAGENET_STD, seed=3)
    path = save_legacy_h5(source, tmp_path / "efficientnetb0_notop.h5")

    def cached_release(fname, origin=None, cache_subdir=None, file_hash=None, **kwargs):
        assert fname == "efficientnetb0_notop.h5"
        return path
    monkeypatch.setattr(keras_efficientnet.file_utils, "get_file", cached_release)
    imagenet = keras.applications.EfficientNetB0(weights="imagenet", include_top=False, input_shape=(SIZE, SIZE, 3))

    with pytest.raises(ValueError) as excinfo:  # a notop file and a model with a classifier
        pretrained.load_into(ours["b0"], path)
    one_line_error(excinfo, path, "no classifier", "skip_head=True")
    report = pretrained.load_into(ours["b0"], path, skip_head=True)
    assert report.head == "skipped (skip_head)"
    assert report.skipped == ("predictions/kernel", "predictions/bias")
    assert not report.stem_rescaled  # (x - mean) / std is exactly our normalisation
    np.testing.assert_allclose(report.source_std, IMAGENET_STD * 255, rtol=1e-5)
    features = keras.Model(ours["b0"].input, ours["b0"].get_layer("top_activation").output)
    ours_features = features(images).numpy()
    assert_close(ours_features, imagenet(images).numpy(), "released keras notop b0 (features)")
    # weights=<file> reads the same file as another function: its stem sees the inputs scaled by
    # std / sqrt(std) = sqrt(std), about 0.48, instead of 1. The choice matters.
    stems = [keras.Model(m.input, m.get_layer("stem_conv").output)(images).numpy() for m in (imagenet, source)]
    scale = float(np.sum(stems[0] * stems[1]) / np.sum(stems[0] ** 2))  # least-squares stems[1] / stems[0]
    print(f"stem, weights=<file> over weights='imagenet': scale {scale:.3f}")
    assert 0.46 < scale < 0.49


def test_keras_file_trained_without_imagenet_mean_is_refused(ours, tmp_path):
    """EfficientNetB0(weights=None) trained from scratch normalises with mean 0, variance 1: our model's
    ImageNet mean cannot be folded into the stem exactly."""
    source = keras_source("b0", variance=np.ones(3, np.float32), mean=np.zeros(3, np.float32), seed=4)
    path = save_legacy_h5(source, tmp_path / "scratch.h5")
    before = ours["b0"].get_layer("stem_conv").kernel.numpy()
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], path)
    one_line_error(excinfo, path, "mean (0.000, 0.000, 0.000)", "std (255.000, 255.000, 255.000)",
                   "(123.675, 116.280, 103.530)")
    np.testing.assert_array_equal(ours["b0"].get_layer("stem_conv").kernel.numpy(), before)


def test_model_built_with_the_sources_mean_loads_exactly(images, tmp_path):
    """What cannot be folded into the stem (a different mean) is a model setting: ModelParams.input_mean and
    input_std. A Keras model trained from scratch (mean 0, variance 1, recorded in its file) and an AdvProp-style
    tensorflow/tpu checkpoint ((x - 127.5) / 127.5, stated) give their logits in models built that way."""
    scratch = keras_source("b0", variance=np.ones(3, np.float32), mean=np.zeros(3, np.float32), seed=11)
    path = save_legacy_h5(scratch, tmp_path / "scratch.h5")
    mean, std = pretrained.recorded_normalization(path)
    np.testing.assert_allclose(mean, (0, 0, 0), atol=1e-6)
    np.testing.assert_allclose(std, (255, 255, 255), rtol=1e-6)
    model = efficientnet.build_model("b0", CLASSES, input_mean=mean, input_std=std)
    report = pretrained.load_into(model, path)
    assert not report.stem_rescaled
    assert_close(logits(model, images), logits(scratch, images), "keras b0 trained from scratch, input_mean=0")

    advprop = keras_source("b0", variance=np.full(3, 0.25, np.float32), mean=np.full(3, 0.5, np.float32), seed=12)
    prefix, _ = write_tpu_checkpoint(tmp_path / "advprop", advprop, "efficientnet-b0")
    assert pretrained.recorded_normalization(prefix) is None  # a tensorflow/tpu checkpoint does not say
    model = efficientnet.build_model("b0", CLASSES, **efficientnet.parse_overrides("input_mean=127.5,input_std=127.5"))
    pretrained.load_into(model, prefix, input_normalization=((127.5,) * 3, (127.5,) * 3))
    assert_close(logits(model, images), logits(advprop, images), "tpu b0 advprop, input_mean=127.5")


def test_exclude_leaves_the_matched_variables_as_they_were(sources, tmp_path):
    model = with_trained_like_statistics(efficientnet.build_model("b0", CLASSES), seed=13)
    before = {w.path: w.numpy() for w in model.weights}
    report = pretrained.load_into(model, sources["b0_v3"], exclude=("block7", ".*_bn/moving_"))
    kept = set(report.skipped)
    assert "block7a_se_reduce/bias" in kept and "stem_bn/moving_mean" in kept and "stem_bn/gamma" not in kept
    assert report.assigned == len(model.weights) - len(kept)
    for w in model.weights:
        assert np.array_equal(w.numpy(), before[w.path]) == (w.path in kept), w.path
    with pytest.raises(ValueError, match="'block9' matches no variable"):
        pretrained.load_into(model, sources["b0_v3"], exclude=("block9",))


def keras_from(path, variant, **kwargs):
    return getattr(keras.applications, f"EfficientNet{variant.upper()}")(
        weights=path, input_shape=(SIZE, SIZE, 3), **kwargs)


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_round_trip_through_keras_applications(ours, variant, images, tmp_path):
    model = with_trained_like_statistics(ours[variant], seed=5)
    model.get_layer("predictions").bias.assign(np.linspace(-0.5, 0.5, CLASSES))
    saved = [w.numpy() for w in model.weights]
    ours_logits = logits(model, images)
    suffixes = (".h5", ".weights.h5") if variant == "b0" else (".h5",)
    for suffix in suffixes:
        path = pretrained.save_keras_weights(model, str(tmp_path / f"ours_{variant}{suffix}"))
        assert pretrained.detect_format(path) == ("keras_v3" if suffix == ".weights.h5" else "keras_h5")
        keras_model = keras_from(path, variant, classes=CLASSES, classifier_activation=None)
        assert_close(logits(keras_model, images), ours_logits, f"ours -> keras{suffix} {variant}")
        # And back: nothing to fold, every variable bit-identical.
        with_trained_like_statistics(model, seed=6)
        report = pretrained.load_into(model, path)
        assert not report.stem_rescaled
        for w, value in zip(model.weights, saved):
            np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)
    if variant == "b0":
        path = pretrained.save_keras_weights(model, str(tmp_path / "ours_notop.h5"), include_top=False)
        features = keras.Model(model.input, model.get_layer("top_activation").output)
        assert_close(keras_from(path, variant, include_top=False)(images).numpy(), features(images).numpy(),
                     "ours -> keras notop b0 (features)")


# ---------------------------------------------------------------------------------------------------------
# tensorflow/tpu checkpoints


def tpu_names(keras_model, scope):
    """{keras variable path: tensorflow/tpu variable name}, by the reference's rules: variable scopes stem,
    blocks_<i>, head; tf.layers named at first call (conv2d, conv2d_1, tpu_batch_normalization_<n>), as in
    efficientnet_model.py and Keras's own converter of these checkpoints (efficientnet_weight_update_util.py)."""
    names = {"stem_conv/kernel": f"{scope}/stem/conv2d/kernel",
             "top_conv/kernel": f"{scope}/head/conv2d/kernel",
             "predictions/kernel": f"{scope}/head/dense/kernel",
             "predictions/bias": f"{scope}/head/dense/bias"}
    for var in ("gamma", "beta", "moving_mean", "moving_variance"):
        names[f"stem_bn/{var}"] = f"{scope}/stem/tpu_batch_normalization/{var}"
        names[f"top_bn/{var}"] = f"{scope}/head/tpu_batch_normalization/{var}"
    blocks = sorted({w.path.split("_")[0] for w in keras_model.weights if w.path.startswith("block")},
                    key=lambda b: (int(b[5:-1]), b[-1]))
    for i, block in enumerate(blocks):
        expands = any(w.path.startswith(f"{block}_expand_conv") for w in keras_model.weights)
        bn = ["tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2"]
        layers = {"dwconv": "depthwise_conv2d", "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1"}
        if expands:
            layers.update(expand_conv="conv2d", project_conv="conv2d_1", expand_bn=bn[0], bn=bn[1], project_bn=bn[2])
        else:
            layers.update(project_conv="conv2d", bn=bn[0], project_bn=bn[1])
        for suffix, tpu_layer in layers.items():
            for var in ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"):
                tpu_var = "depthwise_kernel" if suffix == "dwconv" else var
                names[f"{block}_{suffix}/{var}"] = f"{scope}/blocks_{i}/{tpu_layer}/{tpu_var}"
    return names


def write_tpu_checkpoint(folder, keras_model, scope, *, with_ema=True, seed=0):
    """model.ckpt in `folder` (with its 'checkpoint' state file): EMA shadows hold `keras_model`'s weights,
    the raw variables a perturbed copy; RMSProp slots and global_step as a training run leaves them."""
    rng = np.random.default_rng(seed)
    names = tpu_names(keras_model, scope)
    tensors, raw = {"global_step": np.array(218727, np.int64)}, {}
    for w in keras_model.weights:
        if w.path.startswith("normalization"):
            continue  # preprocessing outside the TPU model
        value = w.numpy()
        name = names[w.path]
        raw[w.path] = (value * rng.uniform(0.5, 1.5, value.shape)).astype(np.float32)
        tensors[name] = raw[w.path]
        tensors[name + "/RMSProp"] = np.abs(value)
        if with_ema:
            tensors[name + "/ExponentialMovingAverage"] = value
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, "model.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                      tensors=[tf.constant(v) for v in tensors.values()])
    tf.compat.v1.train.update_checkpoint_state(str(folder), prefix)
    return prefix, raw


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_tpu_checkpoint_prefers_ema(sources, ours, images, tmp_path, variant):
    folder = tmp_path / "tpu"
    prefix, raw = write_tpu_checkpoint(folder, sources[variant], f"efficientnet-{variant}")
    assert pretrained.detect_format(str(folder)) == pretrained.detect_format(prefix) == "tpu"
    report = pretrained.load_into(ours[variant], str(folder))
    assert report.weights == "ema" and report.assigned == len(ours[variant].weights)
    assert not report.stem_rescaled
    ema_logits = logits(ours[variant], images)
    assert_close(ema_logits, sources[f"{variant}_logits"], f"tpu ema {variant}")

    raw_report = pretrained.load_into(ours[variant], prefix, weights="raw")
    assert raw_report.weights == "raw"
    for w in ours[variant].weights:
        np.testing.assert_array_equal(w.numpy(), raw[w.path], err_msg=w.path)
    diff = rel_diff(logits(ours[variant], images), ema_logits)
    print(f"tpu raw vs ema {variant}: {diff:.2e}")
    assert diff > 10 * TOLERANCE  # raw and EMA give other logits: the EMA load above did use the shadows


def test_tpu_checkpoint_without_ema_loads_raw(sources, ours, tmp_path):
    prefix, raw = write_tpu_checkpoint(tmp_path / "tpu_raw", sources["b0"], "efficientnet-b0", with_ema=False)
    report = pretrained.load_into(ours["b0"], prefix)
    assert report.weights == "raw"
    assert any("no ExponentialMovingAverage" in n for n in report.notes)
    np.testing.assert_array_equal(ours["b0"].get_layer("top_bn").moving_variance.numpy(),
                                  raw["top_bn/moving_variance"])


# ---------------------------------------------------------------------------------------------------------
# timm safetensors


def timm_state_dict(keras_model):
    """The state dict timm's tf_efficientnet_b<k> holds for the same network: modules conv_stem, bn1,
    blocks.<stage>.<index>.{conv_dw, bn1, se.conv_reduce, se.conv_expand, conv_pw, bn2} in the first stage
    (DepthwiseSeparableConv), {conv_pw, bn1, conv_dw, bn2, se.*, conv_pwl, bn3} after (InvertedResidual),
    conv_head, bn2, classifier; PyTorch layouts (OIHW, depthwise (C, 1, kH, kW), linear (out, in))."""
    first = {"dwconv": "conv_dw", "bn": "bn1", "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
             "project_conv": "conv_pw", "project_bn": "bn2"}
    later = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv": "conv_dw", "bn": "bn2",
             "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand", "project_conv": "conv_pwl",
             "project_bn": "bn3"}
    top = {"stem_conv": "conv_stem", "stem_bn": "bn1", "top_conv": "conv_head", "top_bn": "bn2",
           "predictions": "classifier"}
    bn_vars = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    state = {}
    for w in keras_model.weights:
        layer, var = w.path.split("/")
        if layer.startswith("normalization"):
            continue
        m = re.match(r"^block(\d)([a-z])_(.+)$", layer)
        if m:
            stage, index = int(m.group(1)) - 1, ord(m.group(2)) - ord("a")
            module = f"blocks.{stage}.{index}." + (first if stage == 0 else later)[m.group(3)]
        else:
            module = top[layer]
        value = w.numpy()
        if value.ndim == 4:
            value = value.transpose((2, 3, 0, 1) if layer.endswith("dwconv") else (3, 2, 0, 1))
        elif value.ndim == 2:
            value = value.T
        state[f"{module}.{bn_vars.get(var, 'weight' if var == 'kernel' else var)}"] = np.ascontiguousarray(value)
        if var == "moving_variance":
            state[f"{module}.num_batches_tracked"] = np.array(1000, np.int64)
    return state


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_timm_safetensors_give_the_same_logits(sources, ours, images, tmp_path, variant):
    path = str(tmp_path / "model.safetensors")
    save_file(timm_state_dict(sources[variant]), path, metadata={"format": "pt"})
    assert pretrained.detect_format(path) == pretrained.detect_format(str(tmp_path)) == "timm_safetensors"
    report = pretrained.load_into(ours[variant], path)
    assert report.format == "timm_safetensors" and report.assigned == len(ours[variant].weights)
    assert_close(logits(ours[variant], images), sources[f"{variant}_logits"], f"timm {variant}")


def test_timm_layouts_checked_against_pytorch_convolution_semantics(ours, images, tmp_path):
    """Independent of any Keras mapping: the stem and the first depthwise convolution computed in numpy as
    PyTorch does from the file's OIHW kernels (cross-correlation, TensorFlow 'same' padding as timm's
    Conv2dSame) equal our layers' outputs after loading."""
    rng = np.random.default_rng(7)
    state = timm_state_dict(with_trained_like_statistics(efficientnet.build_model("b0", CLASSES), seed=8))
    state["conv_stem.weight"] = rng.normal(0, 0.3, state["conv_stem.weight"].shape).astype(np.float32)
    state["blocks.0.0.conv_dw.weight"] = rng.normal(0, 0.3, state["blocks.0.0.conv_dw.weight"].shape).astype(
        np.float32)
    path = str(tmp_path / "model.safetensors")
    save_file(state, path)
    model = ours["b0"]
    pretrained.load_into(model, path)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in
                                       ("normalize", "stem_conv", "stem_activation", "block1a_dwconv")])
    normalized, stem, stem_act, dwconv = (t.numpy() for t in probe(images))

    def correlate(x, weight, stride, pad, depthwise):
        x = np.pad(x, ((0, 0), pad, pad, (0, 0)))
        k = weight.shape[-1]
        windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
        if depthwise:  # windows: [n, i, j, c, kh, kw]; weight: [c, 1, kh, kw]
            return np.einsum("nijcab,cab->nijc", windows, weight[:, 0])
        return np.einsum("nijcab,ocab->nijo", windows, weight)

    # 'same' with stride 2 on an even size pads one row/column after, none before.
    expected_stem = correlate(normalized, state["conv_stem.weight"], 2, (0, 1), False)
    assert_close(stem, expected_stem, "timm stem conv vs numpy OIHW")
    expected_dw = correlate(stem_act, state["blocks.0.0.conv_dw.weight"], 1, (1, 1), True)
    assert_close(dwconv, expected_dw, "timm depthwise conv vs numpy (C,1,kH,kW)")


def test_timm_config_json_normalisation_and_architecture(sources, ours, tmp_path):
    save_file(timm_state_dict(sources["b0"]), str(tmp_path / "model.safetensors"))
    config = tmp_path / "config.json"
    config.write_text('{"architecture": "tf_efficientnet_b0", "pretrained_cfg": '
                      '{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}')
    with pytest.raises(ValueError) as excinfo:  # an AdvProp-style (Inception) normalisation
        pretrained.load_into(ours["b0"], str(tmp_path))
    one_line_error(excinfo, tmp_path, "mean (127.500, 127.500, 127.500)")
    config.write_text('{"architecture": "efficientnet_b0"}')
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], str(tmp_path / "model.safetensors"))
    one_line_error(excinfo, tmp_path / "model.safetensors", "'efficientnet_b0'", "tf_efficientnet_b<k>")


# ---------------------------------------------------------------------------------------------------------
# our own checkpoints


@pytest.fixture(scope="module")
def ten_classes():
    return efficientnet.build_model("b0", 10)


def test_our_checkpoint_ema_and_raw(ours, ten_classes, images, tmp_path):
    trained = with_trained_like_statistics(ours["b0"], seed=9)
    ema = ExponentialMovingAverage(trained, 0.9, tf.distribute.get_strategy())
    rng = np.random.default_rng(10)
    for shadow in ema.shadows:
        shadow.assign(shadow * rng.uniform(0.7, 1.3, shadow.shape))
    model_dir = tmp_path / "run"
    make_checkpoint(trained, ema=ema, epoch=tf.Variable(3), batch_in_epoch=tf.Variable(0)).write(
        str(model_dir / "ckpt-3"))
    tf.compat.v1.train.update_checkpoint_state(str(model_dir), str(model_dir / "ckpt-3"))
    raw_logits = logits(trained, images)
    ema.swap()
    ema_logits = logits(trained, images)
    ema.swap()  # raw weights again: the EMA load below must change them
    print(f"ours raw vs ema: {rel_diff(raw_logits, ema_logits):.2e}")
    assert rel_diff(raw_logits, ema_logits) > 10 * TOLERANCE

    assert pretrained.detect_format(str(model_dir)) == "ours"
    report = pretrained.load_into(trained, str(model_dir))
    assert report.weights == "ema" and report.assigned == len(trained.weights)
    assert_close(logits(trained, images), ema_logits, "ours ema b0")
    report = pretrained.load_into(trained, str(model_dir / "ckpt-3"), weights="raw")
    assert report.weights == "raw"
    assert_close(logits(trained, images), raw_logits, "ours raw b0")

    # Fine-tuning from it into 10 classes: allowed only when asked, and reported.
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ten_classes, str(model_dir))
    one_line_error(excinfo, model_dir, "7 classes", "10", "replace_head=True")
    report = pretrained.load_into(ten_classes, str(model_dir), replace_head=True)
    assert report.head.startswith("replaced: the file has 7 classes, the model 10")
    assert report.skipped == ("predictions/kernel", "predictions/bias")
    assert report.assigned == len(ten_classes.weights) - 2


# ---------------------------------------------------------------------------------------------------------
# errors: one line, naming the file


def test_missing_file(ours, tmp_path):
    path = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError) as excinfo:
        pretrained.load_into(ours["b0"], str(path))
    one_line_error(excinfo, path, "no such file")


def test_another_variants_file_names_the_first_misfit(sources, ours, tmp_path):
    before = [w.numpy() for w in ours["b2"].weights]
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b2"], sources["b0_h5"])
    # B0 and B2 agree up to block 3a's projection: 40 filters in B0, 48 in B2.
    one_line_error(excinfo, sources["b0_h5"], "block3a_project_conv/kernel", "efficientnet-b2",
                   "expected shape (1, 1, 144, 48)", "found (1, 1, 144, 40)",
                   "the model has 23 MBConv blocks, the file 16")
    for w, value in zip(ours["b2"].weights, before):  # nothing was assigned
        np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)

    # A deeper file: B2's extra block 1b has no place in B0.
    folder = tmp_path / "tpu_b2"
    prefix, _ = write_tpu_checkpoint(folder, sources["b2"], "efficientnet-b2")
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], prefix)
    one_line_error(excinfo, prefix, "efficientnet-b2/blocks_1/depthwise_conv2d/depthwise_kernel",
                   "our block1b_dwconv/kernel", "expected shape nothing", "found (3, 3, 16, 1)",
                   "the file is efficientnet-b2")


def test_class_count_mismatch_needs_permission(sources, ten_classes):
    model = ten_classes
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(model, sources["b0_v3"])
    one_line_error(excinfo, sources["b0_v3"], "7 classes", "10", "replace_head=True")
    report = pretrained.load_into(model, sources["b0_v3"], replace_head=True)
    assert report.skipped == ("predictions/kernel", "predictions/bias")
    report = pretrained.load_into(model, sources["b0_v3"], skip_head=True)
    assert report.head == "skipped (skip_head)"


def truncate(src, dst, fraction=0.5):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: int(len(data) * fraction)])
    return str(dst)


def test_truncated_files(sources, ours, tmp_path):
    h5 = truncate(sources["b0_h5"], tmp_path / "cut.h5")
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], h5)
    one_line_error(excinfo, h5, "unreadable HDF5 file")

    st_path = str(tmp_path / "full.safetensors")
    save_file(timm_state_dict(sources["b0"]), st_path)
    st = truncate(st_path, tmp_path / "cut.safetensors")
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], st)
    one_line_error(excinfo, st, "unreadable safetensors file")

    prefix, _ = write_tpu_checkpoint(tmp_path / "tpu", sources["b0"], "efficientnet-b0")
    data_file = prefix + ".data-00000-of-00001"
    truncate(data_file, data_file)
    before = ours["b0"].get_layer("top_bn").moving_mean.numpy()
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], prefix)
    one_line_error(excinfo, prefix, "unreadable")
    np.testing.assert_array_equal(ours["b0"].get_layer("top_bn").moving_mean.numpy(), before)
    truncate(prefix + ".index", prefix + ".index", 0.3)
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], prefix)
    one_line_error(excinfo, prefix, "unreadable TensorFlow checkpoint")


def test_unknown_format(ours, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"not weights at all" * 10)
    with pytest.raises(ValueError) as excinfo:
        pretrained.detect_format(str(path))
    one_line_error(excinfo, path, "not a known weights format")
    with pytest.raises(ValueError) as excinfo:
        pretrained.load_into(ours["b0"], str(tmp_path), weights="raw")
    one_line_error(excinfo, tmp_path, "a directory without a 'checkpoint' file")
    with pytest.raises(ValueError, match="weights='best'"):
        pretrained.load_into(ours["b0"], str(path), weights="best")


def test_stated_input_normalisation_is_folded_into_the_stem(sources, ours, images, tmp_path):
    """A checkpoint does not record its normalisation; stated with another std, the stem absorbs it and the
    network computes what the Keras file with that variance (same weights) computes."""
    prefix, _ = write_tpu_checkpoint(tmp_path / "tpu", sources["b0"], "efficientnet-b0")
    report = pretrained.load_into(ours["b0"], prefix,
                                  input_normalization=(IMAGENET_MEAN * 255, np.sqrt(ODD_VARIANCE) * 255))
    assert report.stem_rescaled
    assert prefix in report.summary() and "tpu, ema weights" in report.summary()
    assert_close(logits(ours["b0"], images), sources["b0_file_logits"], "tpu b0 with a stated std")
