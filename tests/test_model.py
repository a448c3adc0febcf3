"""The EfficientNet definition against the published architecture facts (../shared/recipe.md)."""


import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet
import preloaded

# Tan & Le 2019 / Keras Applications, 1000 classes.
TRAINABLE_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
    "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960,
}
BLOCKS_PER_VARIANT = {"b0": 16, "b1": 23, "b2": 23, "b3": 26, "b4": 32, "b5": 39, "b6": 45, "b7": 55}


@pytest.mark.parametrize("variant", sorted(TRAINABLE_PARAMS))
def test_trainable_parameter_count_matches_paper(variant):
    s = efficientnet.summarize(efficientnet.params_for(variant), variant)
    assert s.trainable_params == TRAINABLE_PARAMS[variant]


def test_b0_bn_statistics_and_multiply_adds():
    s = efficientnet.summarize(efficientnet.params_for("b0"), "b0")
    assert s.non_trainable_params == 42_016  # BN moving mean/variance only: normalization has no weights
    assert abs(s.multiply_adds / 0.39e9 - 1) <= 0.02


@pytest.mark.parametrize("variant,count", sorted(BLOCKS_PER_VARIANT.items()))
def test_block_count_per_variant(variant, count):
    assert len(efficientnet.decode_blocks(efficientnet.params_for(variant))) == count


def test_b0_block_structure():
    specs = efficientnet.decode_blocks(efficientnet.params_for("b0"))
    assert [s.name for s in specs] == [
        "block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b", "block4c",
        "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d", "block7a"]
    strided = [s.name for s in specs if s.strides == 2]
    assert strided == ["block2a", "block3a", "block4a", "block6a"]
    skips = [s.name for s in specs if s.has_skip]
    assert skips == ["block2b", "block3b", "block4b", "block4c", "block5b", "block5c",
                     "block6b", "block6c", "block6d"]
    # SE width is a quarter of the block's *input* filters, not of the expanded ones.
    se = {s.name: s.se_filters for s in specs}
    assert se["block1a"] == 8 and se["block2a"] == 4 and se["block2b"] == 6 and se["block7a"] == 48
    assert [s.kernel_size for s in specs if s.name.endswith("a")] == [3, 3, 5, 3, 5, 5, 3]
    # Stochastic depth grows linearly with the block index: 0.2 * i / 16.
    np.testing.assert_allclose([s.drop_rate for s in specs], [0.2 * i / 16 for i in range(16)])


def test_built_model_follows_the_decoded_blocks():
    params = efficientnet.params_for("b4")
    model = efficientnet.build_from_params(params)
    specs = efficientnet.decode_blocks(params)
    names = {layer.name for layer in model.layers}
    for spec in specs:
        assert (f"{spec.name}_add" in names) == spec.has_skip
        assert (f"{spec.name}_expand_conv" in names) == (spec.expand_ratio != 1)
        assert model.get_layer(f"{spec.name}_dwconv").strides == (spec.strides, spec.strides)
        assert model.get_layer(f"{spec.name}_se_reduce").filters == spec.se_filters
        assert model.get_layer(f"{spec.name}_project_conv").filters == spec.filters_out
    bn = model.get_layer("stem_bn")
    assert bn.momentum == 0.99 and bn.epsilon == 1e-3
    assert model.get_layer("top_dropout").rate == 0.4
    assert model.get_layer("stem_conv").filters == 48 and model.get_layer("top_conv").filters == 1792


def test_filter_rounding_and_repeats():
    assert efficientnet.round_filters(32, 1.4) == 48
    assert efficientnet.round_filters(1280, 2.0) == 2560
    assert efficientnet.round_filters(16, 1.1) == 16  # 17.6 rounds to 16, which keeps >= 90%
    assert efficientnet.round_filters(40, 1.1) == 48  # 44 rounds half-up to 48
    assert efficientnet.round_repeats(3, 3.1) == 10


def _random_images(size, batch=2, seed=0):
    return tf.random.stateless_uniform((batch, size, size, 3), seed=(seed, 1), maxval=255.0)


def test_stochastic_depth_only_in_training():
    images = _random_images(32, batch=4)
    model = efficientnet.build_model("b0", num_classes=10, drop_connect_rate=0.5, dropout_rate=0.0)
    plain = efficientnet.build_model("b0", num_classes=10, drop_connect_rate=0.0, dropout_rate=0.0)
    plain.set_weights(model.get_weights())
    inference = model(images, training=False).numpy()
    np.testing.assert_allclose(inference, model(images, training=False).numpy())
    np.testing.assert_allclose(inference, plain(images, training=False).numpy(), rtol=1e-5, atol=1e-5)
    # Training mode: BN uses batch statistics either way; only dropped residual branches can differ.
    keras.utils.set_random_seed(1)
    a = model(images, training=True).numpy()
    b = model(images, training=True).numpy()
    assert not np.allclose(a, b)
    np.testing.assert_allclose(plain(images, training=True).numpy(), plain(images, training=True).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("size", [32, 224])
def test_forward_pass_under_each_precision(policy, size):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = efficientnet.build_model("b0", num_classes=7)
        logits = model(_random_images(size), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.shape == (2, 7)
    assert logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()
    if policy != "float32":
        assert model.get_layer("block2a_dwconv").compute_dtype == policy.split("_")[1]
        assert model.get_layer("block2a_dwconv").variable_dtype == "float32"


@pytest.mark.parametrize("policy,tol", [("float32", 1e-5), ("mixed_bfloat16", 5e-2), ("mixed_float16", 5e-3)])
@pytest.mark.parametrize("shape", [(8, 7, 7, 16), (3, 1, 1, 4), (1, 1, 1, 4)])
def test_fused_batch_norm_matches_keras_batch_norm(policy, tol, shape):
    """Our BatchNorm (fused kernel) against Keras's: outputs, gradients, moving statistics, inference."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        ours = efficientnet.model.BatchNorm(momentum=0.9, epsilon=1e-3)
        keras_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 3.0, shape), tf.float32)
    gamma_beta_mean_variance = [rng.uniform(0.5, 1.5, shape[-1]) for _ in range(4)]
    for layer in (ours, keras_bn):
        layer.build(x.shape)
        for w, value in zip(layer.weights, gamma_beta_mean_variance):
            w.assign(value)
    results = []
    for layer in (ours, keras_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=True), tf.float32)
            loss = tf.reduce_sum(y * y * x)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        results.append((y, grads, [w.numpy() for w in layer.non_trainable_weights],
                        tf.cast(layer(x, training=False), tf.float32)))
    (y, grads, moving, inference), (y_k, grads_k, moving_k, inference_k) = results
    assert y.dtype == y_k.dtype
    scale = lambda t: max(1.0, float(np.abs(t).max()))  # noqa: E731
    np.testing.assert_allclose(y, y_k, atol=tol * scale(y_k))
    for g, g_k in zip(grads, grads_k):
        np.testing.assert_allclose(g, g_k, atol=tol * scale(g_k))
    for m, m_k in zip(moving, moving_k):
        np.testing.assert_allclose(m, m_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inference, inference_k, atol=tol * scale(inference_k))
    assert not np.allclose(moving[0], 1.0)  # the statistics did move


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
def test_swish_is_as_accurate_as_keras_silu(dtype):
    """Value and gradient against float64 math: within twice the error of Keras's own silu."""
    x = tf.cast(tf.linspace(-12.0, 12.0, 4801), dtype)
    dy = tf.cast(tf.cos(tf.linspace(0.0, 40.0, 4801)), dtype)
    x64, dy64 = tf.cast(x, tf.float64), tf.cast(dy, tf.float64)
    s = tf.sigmoid(x64)
    exact = (x64 * s).numpy(), (dy64 * s * (1.0 + x64 * (1.0 - s))).numpy()
    errors = []
    for fn in (efficientnet.model.swish, keras.activations.silu):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        g = tape.gradient(y, x, output_gradients=dy)
        assert y.dtype == g.dtype == dtype
        errors.append([np.abs(tf.cast(t, tf.float64).numpy() - e).max() for t, e in zip((y, g), exact)])
    (value_err, grad_err), (keras_value_err, keras_grad_err) = errors
    floor = float(np.finfo(dtype.as_numpy_dtype).eps) if dtype != tf.bfloat16 else 2.0 ** -8
    assert value_err <= 2 * keras_value_err + floor
    assert grad_err <= 2 * keras_grad_err + floor
    model = efficientnet.build_model("b0", num_classes=3)
    assert model.get_layer("block1a_activation").activation is efficientnet.model.swish
    relu = efficientnet.build_model("b0", num_classes=3, activation="relu")
    assert relu.get_layer("block1a_activation").activation is keras.activations.relu


def test_input_normalization_is_inside_the_model():
    model = efficientnet.build_model("b0", num_classes=3)
    mean_image = tf.constant([[[[0.485 * 255, 0.456 * 255, 0.406 * 255]]]])
    np.testing.assert_allclose(model.get_layer("normalize")(mean_image).numpy(), 0.0, atol=1e-5)
    assert model.get_layer("normalize")(tf.constant([[[[255.0, 0.0, 0.0]]]])).numpy()[0, 0, 0, 0] == \
        pytest.approx((1 - 0.485) / 0.229, rel=1e-5)


def test_input_normalization_setting_reaches_the_model_and_survives_run_spec_json(tmp_path):
    from loops.checkpoints import RunSpec

    overrides = efficientnet.parse_overrides("input_mean=127.5,input_std=10:20:40")
    assert overrides == {"input_mean": 127.5, "input_std": (10.0, 20.0, 40.0)}
    spec = RunSpec(variant="b0", num_classes=3, model_overrides=overrides, class_names=("a", "b", "c"),
                   eval_img_size=32)
    spec.save(str(tmp_path))
    loaded = RunSpec.load(str(tmp_path))
    loaded.check_compatible(spec, str(tmp_path))  # a resumed run with the same --mparams is accepted
    normalize = loaded.build_model().get_layer("normalize")
    out = normalize(tf.constant([[[[127.5, 147.5, 47.5]]]])).numpy()[0, 0, 0]
    np.testing.assert_allclose(out, [0.0, 1.0, -2.0], atol=1e-6)
    with pytest.raises(ValueError, match="input_std=.*one number or three"):
        efficientnet.params_for("b0", input_std=(1.0, 2.0))


def test_variant_names_and_bad_arguments():
    assert efficientnet.canonical_variant("EfficientNet-B3") == "b3"
    assert efficientnet.canonical_variant("B7") == "b7"
    with pytest.raises(ValueError, match="b0, b1, b2, b3, b4, b5, b6, b7"):
        efficientnet.build_model("b8")
    with pytest.raises(ValueError, match="drop_connect_rate"):
        efficientnet.build_model("b0", dropout=0.1)
    with pytest.raises(ValueError, match="dropout_rate"):
        efficientnet.build_model("b0", dropout_rate=1.5)
    with pytest.raises(ValueError, match="activation"):
        efficientnet.build_model("b0", activation="nope")


def test_mparams_overrides():
    overrides = efficientnet.parse_overrides(["dropout_rate=0.3,bn_momentum=0.9", "sync_bn=true",
                                              "activation=relu", "num_classes=5"])
    assert overrides == {"dropout_rate": 0.3, "bn_momentum": 0.9, "sync_bn": True, "activation": "relu",
                         "num_classes": 5}
    model = efficientnet.build_model("b0", **overrides)
    assert model.output.shape[-1] == 5
    assert model.get_layer("top_dropout").rate == 0.3
    assert model.get_layer("stem_bn").momentum == 0.9 and model.get_layer("stem_bn").synchronized
    with pytest.raises(ValueError, match="unknown model parameter 'width'.*width_coefficient"):
        efficientnet.parse_overrides("width=2")
    with pytest.raises(ValueError, match="not a valid float"):
        efficientnet.parse_overrides("dropout_rate=high")


def test_summary_command_prints_counts():
    proc = preloaded.run(["-m", "efficientnet", "--variant", "EfficientNet-B4"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "19,341,616" in proc.stdout and "125,200" in proc.stdout and "380 px" in proc.stdout
    bad = preloaded.run(["-m", "efficientnet", "--variant", "b9"])
    assert bad.returncode != 0 and "variant" in bad.stderr
