"""The train step's arithmetic: accumulation, EMA, learning rate, loss scaling, weight decay."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.autograph.impl import api as autograph_api

import efficientnet
from efficientnet.model import BatchNorm, swish
from input import DataConfig, eval_dataset, mix_batch, open_dataset, testdata, train_dataset
from input.config import AugmentConfig
from loops.config import TrainConfig
from loops.parallel.distribution import Engine
from loops.ema import ExponentialMovingAverage
from loops.optimization import create_optimizer, decayed_variables, learning_rate_schedule, peak_learning_rate
from loops.steps import TrainState, deferred_mixing_seed, make_eval_step, make_train_step


def _engine():
    return Engine(tf.distribute.OneDeviceStrategy("/cpu:0"), "one_device")


def _small_model(num_classes=4):
    """No BatchNorm and no dropout, so a batch split in micro-batches has exactly the same gradient."""
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3, activation="swish"),
        keras.layers.DepthwiseConv2D(3, activation="swish"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes),
    ])


def _batch(n, num_classes=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    labels = np.eye(num_classes, dtype="float32")[rng.integers(0, num_classes, n)]
    return images, labels


def _state(cfg, model_fn, ema_decay=0.0):
    engine = _engine()
    with engine.strategy.scope():
        model = model_fn()
        optimizer = create_optimizer(cfg, learning_rate_schedule(cfg, 1, steps_per_epoch=10))
        optimizer.build(model.trainable_variables)
        ema = ExponentialMovingAverage(model, ema_decay, engine.strategy) if ema_decay else None
    return TrainState(model=model, optimizer=optimizer, ema=ema, engine=engine)


def _run_steps(state, cfg, batches):
    step = make_train_step(state, cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
    iterator = iter(tf.data.Dataset.from_tensor_slices(batches).map(lambda x, y: (x, y)))
    return [step(iterator) for _ in range(len(batches[0]))]


def _cfg(tmp_path, **kw):
    base = dict(model_dir=str(tmp_path), max_epochs=10, warmup_epochs=0, lr_init=0.05, label_smoothing=0.1,
                weight_decay=1e-3)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("optimizer", ["rmsprop", "sgd"])
def test_accumulating_k_micro_batches_equals_one_step_on_their_concatenation(tmp_path, optimizer):
    images, labels = _batch(12)
    # One update on the full batch of 12 ...
    whole_cfg = _cfg(tmp_path, train_batch_size=12, optimizer=optimizer)
    whole = _state(whole_cfg, _small_model)
    out_whole = _run_steps(whole, whole_cfg, (images[None], labels[None]))
    # ... equals one update over 3 accumulated micro-batches of 4 (same global batch, same LR).
    acc_cfg = _cfg(tmp_path, train_batch_size=4, grad_accum_steps=3, optimizer=optimizer)
    acc = _state(acc_cfg, _small_model)
    out_acc = _run_steps(acc, acc_cfg, (images[None], labels[None]))
    assert int(acc.optimizer.iterations) == 1
    for a, b in zip(whole.model.get_weights(), acc.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(out_whole[0]["loss"]) == pytest.approx(float(out_acc[0]["loss"]), rel=1e-5)
    # The update really moved the weights (the comparison above is not between two untouched models).
    assert not np.allclose(_small_model().get_weights()[0], acc.model.get_weights()[0])


def test_ema_follows_the_warmup_formula(tmp_path):
    cfg = _cfg(tmp_path, train_batch_size=4, optimizer="sgd")
    state = _state(cfg, _small_model, ema_decay=0.999)
    model = state.model
    expected = [w.copy() for w in model.get_weights()]
    step = make_train_step(state, cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
    images, labels = _batch(4 * 5)
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4))
    for t in range(1, 6):
        step(iterator)
        decay = min(0.999, (1 + t) / (10 + t))
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, model.get_weights())]
    for e, s in zip(expected, state.ema.shadows):
        np.testing.assert_allclose(s.numpy(), e, rtol=1e-5, atol=1e-6)
    # swap() puts the shadows into the model and back.
    raw = model.get_weights()
    state.ema.swap()
    np.testing.assert_allclose(model.get_weights()[0], expected[0], rtol=1e-5, atol=1e-6)
    state.ema.swap()
    np.testing.assert_allclose(model.get_weights()[0], raw[0])


def test_without_weight_decay_a_step_is_keras_fits_step_on_the_same_network_and_batches(tmp_path):
    """What train.py adds to Keras's `fit` on a network is the recipe (L2, EMA, schedule), not another update:
    BatchNorm statistics included, the weights after each step are Keras's to the last bit."""
    cfg = _cfg(tmp_path, train_batch_size=8, weight_decay=0.0, warmup_epochs=1, lr_init=0.5)

    def network():
        keras.utils.set_random_seed(4)
        return keras.Sequential([
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 64.0, offset=-2.0),
            keras.layers.Conv2D(6, 3, use_bias=False, name="conv"),
            BatchNorm(momentum=0.9, name="bn"),  # efficientnet's fused BatchNorm
            keras.layers.Activation(swish),
            keras.layers.DepthwiseConv2D(3, name="dwconv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, name="dense"),
        ], name="net")

    ours = _state(cfg, network)
    theirs = network()
    theirs.compile(optimizer=create_optimizer(cfg, learning_rate_schedule(cfg, 1, steps_per_epoch=10)),
                   loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing))
    images, labels = _batch(8 * 4)
    images, labels = images.reshape(4, 8, 8, 8, 3), labels.reshape(4, 8, 4)
    metrics = _run_steps(ours, cfg, (images, labels))
    for i in range(4):
        loss = theirs.train_on_batch(images[i], labels[i])
        assert float(metrics[i]["loss"]) == pytest.approx(loss, rel=1e-6)
    for a, b in zip(ours.model.weights, theirs.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(network().weights[0].numpy(), theirs.weights[0].numpy())  # both really trained
    assert theirs.weights[3].path == "net/bn/moving_mean" and np.abs(theirs.weights[3].numpy()).max() > 0


def test_learning_rate_schedule_values(tmp_path):
    cfg = _cfg(tmp_path, train_batch_size=64, grad_accum_steps=2, lr_init=0.005, warmup_epochs=5,
               max_epochs=100)
    # LR scales with the global batch: 64 per replica x 4 replicas x 2 accumulation steps = 512.
    assert peak_learning_rate(cfg, num_replicas=4) == pytest.approx(0.005 * 512 / 128)
    schedule = learning_rate_schedule(cfg, num_replicas=4, steps_per_epoch=10)
    peak = 0.02
    values = {s: float(schedule(s)) for s in [0, 25, 50, 525, 1000]}
    assert values[0] == 0.0
    assert values[25] == pytest.approx(peak / 2)
    assert values[50] == pytest.approx(peak)
    assert values[525] == pytest.approx(peak / 2, rel=1e-4)  # cosine half-way through the 950 decay steps
    assert values[1000] == pytest.approx(0.0, abs=1e-9)
    exp = learning_rate_schedule(dataclasses.replace(cfg, lr_decay="exponential"), 4, steps_per_epoch=10)
    assert float(exp(50 + 23)) == pytest.approx(peak)  # decays every 2.4 epochs = 24 steps
    assert float(exp(50 + 24)) == pytest.approx(peak * 0.97)
    assert float(exp(50 + 240)) == pytest.approx(peak * 0.97 ** 10, rel=1e-5)


def test_rmsprop_is_tf_style_with_epsilon_inside_the_root(tmp_path):
    cfg = _cfg(tmp_path, optimizer="rmsprop", epsilon=1e-3, rho=0.9, momentum=0.9)
    optimizer = create_optimizer(cfg, 0.1)
    var = keras.Variable(np.array([1.0], "float32"))
    optimizer.build([var])
    optimizer.apply([tf.constant([0.02])], [var])
    ms = 0.1 * 0.02 ** 2
    assert float(var.numpy()[0]) == pytest.approx(1.0 - 0.1 * 0.02 / np.sqrt(ms + 1e-3), rel=1e-5)


@pytest.mark.parametrize("optimizer,settings,keras_optimizer,fused_op", [
    ("rmsprop", {}, lambda lr: keras.optimizers.RMSprop(lr, rho=0.9, momentum=0.9, epsilon=1e-3),
     "ResourceApplyRMSProp"),
    ("rmsprop", {"momentum": 0.0}, lambda lr: keras.optimizers.RMSprop(lr, rho=0.9, momentum=0.0, epsilon=1e-3),
     None),
    ("sgd", {}, lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True), "ResourceApplyKerasMomentum"),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optimizer_updates_are_keras_optimizers_updates_to_float_rounding(tmp_path, optimizer, settings,
                                                                        keras_optimizer, fused_op, dtype):
    """Ours runs each weight's update as one fused TensorFlow kernel where it can (docs/performance.md); without
    momentum it is Keras's own update. Either way ten updates end where Keras's optimizer ends."""
    cfg = _cfg(tmp_path, optimizer=optimizer, **{"rho": 0.9, "momentum": 0.9, "epsilon": 1e-3, **settings})
    rng = np.random.default_rng(0)
    start = [rng.normal(size=shape).astype(dtype) for shape in [(3, 3, 4, 8), (8,), (16, 5)]]
    gradients = [[tf.constant(rng.normal(size=w.shape).astype(dtype)) for w in start] for _ in range(10)]
    ends, op_types = [], []

    def updater(opt, weights):
        return tf.function(lambda grads: opt.apply(grads, weights))

    for opt in (create_optimizer(cfg, 0.05), keras_optimizer(0.05)):
        weights = [keras.Variable(w) for w in start]
        opt.build(weights)
        apply = updater(opt, weights)
        op_types.append({op.type for op in apply.get_concrete_function(gradients[0]).graph.get_operations()})
        for grads in gradients:
            apply(grads)
        ends.append([w.numpy() for w in weights])
    for ours, theirs, w in zip(*ends, start):
        assert ours.dtype == dtype and np.abs(ours - w).max() > 0.05  # ten updates moved every weight
        np.testing.assert_allclose(ours, theirs, rtol=0, atol={"float32": 1e-6, "float64": 1e-14}[dtype])
    assert (fused_op in op_types[0]) if fused_op else (op_types[0] == op_types[1])
    assert not any(t.startswith("ResourceApply") for t in op_types[1])


def test_weight_decay_covers_depthwise_kernels_but_not_batch_norm():
    # One block per stage at quarter width: every kind of layer B0 has (stem, depthwise, squeeze-excite, batch
    # norm, head) without the cost of building the full network.
    model = efficientnet.build_model("b0", num_classes=10, depth_coefficient=0.1, width_coefficient=0.25)
    names = {v.path for v in decayed_variables(model)}
    assert "block2a_dwconv/kernel" in names and "stem_conv/kernel" in names
    assert "predictions/kernel" in names and "predictions/bias" in names
    assert not any("_bn/" in n for n in names)
    assert len(names) == len(model.trainable_variables) - 2 * sum(
        isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_fp16_overflow_skips_the_update_and_halves_the_loss_scale(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cfg = _cfg(tmp_path, precision="amp_fp16", train_batch_size=4, optimizer="sgd")
        state = _state(cfg, _small_model, ema_decay=0.99)
        model = state.model
        before = [w.copy() for w in model.get_weights()]
        scale = float(state.optimizer.dynamic_scale.numpy())
        images, labels = _batch(4 * 6)
        images[:4] = 6e4  # float16 overflows on these inputs: infinite activations and gradients
        step = make_train_step(state, cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
        iterator = iter(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4))
        step(iterator)
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert float(state.optimizer.dynamic_scale.numpy()) == scale / 2
        assert all(np.isfinite(w).all() for w in model.get_weights())
        for _ in range(5):  # normal batches then train (after any further halving the scale needs)
            step(iterator)
        assert not np.allclose(before[0], model.get_weights()[0])
        assert all(np.isfinite(w).all() for w in model.get_weights())
        assert all(np.isfinite(s.numpy()).all() for s in state.ema.shadows)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _bn_model(num_classes=4):
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("swish"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes),
    ])


def test_fp16_overflow_in_the_forward_pass_leaves_batch_norm_statistics_and_ema_unchanged(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cfg = _cfg(tmp_path, precision="amp_fp16", train_batch_size=4, optimizer="sgd")
        state = _state(cfg, _bn_model, ema_decay=0.9)
        model, ema = state.model, state.ema
        step = make_train_step(state, cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
        images, labels = _batch(4 * 3)
        images[4:8] = 6e4  # the second batch: float16 convolutions overflow to inf in the forward pass
        iterator = iter(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4))
        step(iterator)  # a normal step first, so statistics and shadows are not at their initial values
        before = [w.copy() for w in model.get_weights()]
        shadows = [s.numpy().copy() for s in ema.shadows]
        scale = float(state.optimizer.dynamic_scale.numpy())
        # The overflow really reaches BatchNorm: the same forward pass on a copy ruins its statistics.
        probe = _bn_model()
        probe.set_weights(before)
        probe(images[4:8], training=True)
        assert not all(np.isfinite(w).all() for w in probe.layers[1].non_trainable_weights)

        step(iterator)
        assert float(state.optimizer.dynamic_scale.numpy()) == scale / 2  # skipped
        for a, b in zip(before, model.get_weights()):  # weights and moving statistics bit for bit
            np.testing.assert_array_equal(a, b)
        for a, s in zip(shadows, ema.shadows):
            np.testing.assert_array_equal(a, s.numpy())
        step(iterator)  # the next finite batch trains and moves statistics and shadows again
        assert not np.array_equal(before[2], model.get_weights()[2])  # moving_mean
        assert not np.array_equal(shadows[0], ema.shadows[0].numpy())
        assert all(np.isfinite(w).all() for w in model.get_weights() + [s.numpy() for s in ema.shadows])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_deferred_mixing_trains_on_the_mixed_batch_with_soft_labels(tmp_path):
    cfg = _cfg(tmp_path, train_batch_size=8, optimizer="sgd", weight_decay=0.0,
               augment=AugmentConfig(mixup_alpha=0.4, defer_img_mixing=True))
    state = _state(cfg, _small_model)
    images, labels = _batch(8)
    with state.engine.strategy.scope():
        seed = state.engine.strategy.run(deferred_mixing_seed, args=(cfg.seed, state.optimizer.iterations))
    mixed, soft = mix_batch(images, labels, mixup_alpha=0.4, cutmix_alpha=0.0, seed=seed)
    assert not np.allclose(soft.numpy().max(1), 1.0)  # the batch really is mixed: no row is one-hot
    logits = state.model(mixed, training=True)
    expected = keras.losses.categorical_crossentropy(soft, logits, from_logits=True, label_smoothing=0.1)
    step = make_train_step(state, cfg, mixup_alpha=0.4, cutmix_alpha=0.0)
    out = step(iter(tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)))
    assert float(out["loss"]) == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_cpu_slowdown_warnings_name_the_flag(tmp_path):
    from loops.advice import slowdown_warnings
    cfg = _cfg(tmp_path, use_xla=True, precision="amp_bf16")
    notes = slowdown_warnings(cfg, has_gpu=False)
    assert len(notes) == 2 and notes[0].startswith("--use_xla") and notes[1].startswith("--precision amp_bf16")
    assert slowdown_warnings(cfg, has_gpu=True) == []
    assert slowdown_warnings(_cfg(tmp_path), has_gpu=False) == []


def test_steps_and_input_pipelines_trace_without_autograph_conversions(tmp_path, monkeypatch):
    """Tracing runs no AutoGraph conversion (a second or so of every run's start): the train step with
    accumulation, EMA and weight decay, the eval step, and the train (policy, mixing, skipped corrupt records)
    and eval datasets are written in graph ops and say so."""
    converted = []
    convert = autograph_api._convert_actual

    def recording(entity, program_ctx):
        converted.append(getattr(entity, "__qualname__", repr(entity)))
        return convert(entity, program_ctx)

    monkeypatch.setattr(autograph_api, "_convert_actual", recording)
    testdata.labelled_shards(str(tmp_path), "train", [4, 4])
    testdata.labelled_shards(str(tmp_path), "validation", [3])
    data_cfg = DataConfig(data_dir=str(tmp_path), num_classes=8, skip_corrupt=True)
    info = open_dataset(data_cfg)
    aug = AugmentConfig(augmenter_name="randaugment", mixup_alpha=0.2, cutmix_alpha=1.0)
    train = train_dataset(info, data_cfg, aug, batch_size=4, image_size=8, seed=0)
    evaluation = eval_dataset(info, data_cfg, batch_size=4, image_size=8)
    cfg = _cfg(tmp_path, grad_accum_steps=2, weight_decay=1e-5, train_batch_size=2)
    state = _state(cfg, lambda: _small_model(num_classes=8), ema_decay=0.9)
    step = make_train_step(state, cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
    metrics = step(iter(train))
    sums = make_eval_step(state.model, state.engine)(next(iter(evaluation)))
    assert np.isfinite(float(metrics["loss"])) and float(sums["count"]) == 3.0
    assert converted == []
