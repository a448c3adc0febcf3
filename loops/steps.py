"""The train and eval steps: small functions of (state, batch), built once per stage.

Train step, per replica: split the batch into k micro-batches; forward/backward each (the part XLA
compiles); sum their gradients; agree across replicas whether they are finite (fp16 only); apply once
(Keras sums gradients across replicas in `apply`: one reduction per update); then, across replicas, update
the EMA shadows. A skipped fp16 step (non-finite gradients) leaves everything as it was: the weights (Keras's
LossScaleOptimizer), the BatchNorm moving statistics its forward pass updated (restored here) and the EMA.
The loss and top-1 sums and every process's stop flag (loops.progress) travel in one reduction.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from input import mix_batch
from loops.config import TrainConfig
from loops.ema import ExponentialMovingAverage
from loops.optimization import decayed_variables, l2_penalty
from loops.parallel.engine import Engine
from loops.progress import Progress


@dataclasses.dataclass
class TrainState:
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    ema: ExponentialMovingAverage | None
    engine: Engine
    progress: Progress | None = None  # counted by every step (the training loop's; benchmarks run without)


def _top_k_correct(labels, logits, k):
    return tf.reduce_sum(tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), logits, k), tf.float32))


def deferred_mixing_seed(seed: int, iterations) -> tf.Tensor:
    """The stateless seed of --defer_img_mixing at an update: a function of the run's seed, the update and the
    replica, so a resumed run mixes exactly as an uninterrupted one and replicas mix differently."""
    replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
    return tf.stack([tf.constant(seed, tf.int64) * 1_000_003 + replica, tf.cast(iterations, tf.int64)])


def moving_statistics(model: keras.Model) -> list:
    return [w for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            for w in layer.non_trainable_weights]


def loss_dtype(dtype) -> tf.DType:
    """float32 for half-precision logits (mixed precision); float64 stays float64 (numerical checks)."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def make_train_step(state: TrainState, cfg: TrainConfig, *, mixup_alpha: float, cutmix_alpha: float):
    """Returns train_step(iterator) -> {"loss", "top1"} averaged over the update's examples, and "stop" (> 0 when
    any process was asked to stop); tensors: nothing waits for the step to finish until they are read."""
    model, optimizer, engine = state.model, state.optimizer, state.engine
    k = cfg.grad_accum_steps
    replicas = engine.num_replicas
    micro_global = cfg.train_batch_size * replicas  # examples in one micro-batch across replicas
    variables = model.trainable_variables
    decayed = decayed_variables(model) if cfg.optimizer != "adamw" else []
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    defer_mixing = cfg.augment.defer_img_mixing and (mixup_alpha > 0 or cutmix_alpha > 0)

    # The BatchNorm moving statistics, which the forward pass updates before anyone knows whether the step is kept.
    statistics = moving_statistics(model) if loss_scaled else []

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            logits = tf.cast(logits, loss_dtype(logits.dtype))
            per_example = keras.losses.categorical_crossentropy(
                tf.cast(labels, logits.dtype), logits, from_logits=True, label_smoothing=cfg.label_smoothing)
            # Scaled so that summing over k micro-batches and all replicas gives the mean over the update.
            data_loss = tf.reduce_sum(per_example) / (micro_global * k)
            loss = data_loss
            if decayed and cfg.weight_decay > 0:
                loss += tf.cast(l2_penalty(decayed, cfg.weight_decay), loss.dtype) / (replicas * k)
            if loss_scaled:
                loss = optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        correct = _top_k_correct(tf.argmax(labels, -1), logits, 1)
        return grads, tf.cast(tf.reduce_sum(per_example), tf.float32), correct

    if cfg.use_xla:
        # Only the per-replica math is compiled; the gradient reduction stays outside XLA. Without XLA the
        # function is inlined: a nested tf.function cannot hold synchronized BatchNorm's cross-replica sums.
        forward_backward = tf.function(forward_backward, jit_compile=True, autograph=False)

    progress = state.progress

    def replica_step(images, labels):
        # Read before the forward pass moves them (automatic control dependencies keep the order).
        statistics_before = [tf.identity(v.value) for v in statistics]
        if defer_mixing:
            images, labels = mix_batch(images, labels, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                       seed=deferred_mixing_seed(cfg.seed, optimizer.iterations))
        if k == 1:
            grads, loss_sum, correct = forward_backward(images, labels)
        else:
            shape = tf.shape(images)
            images = tf.reshape(images, tf.concat([[k, shape[0] // k], shape[1:]], 0))
            labels = tf.reshape(labels, [k, -1, labels.shape[-1]])

            def accumulate(i, grads, loss_sum, correct):
                micro_grads, micro_loss, micro_correct = forward_backward(images[i], labels[i])
                return (i + 1, [a + b for a, b in zip(grads, micro_grads)], loss_sum + micro_loss,
                        correct + micro_correct)

            start = (tf.constant(0), [tf.zeros_like(v) for v in variables], tf.constant(0.0), tf.constant(0.0))
            _, grads, loss_sum, correct = tf.while_loop(lambda i, *_: i < k, accumulate, start)
        grads = engine.reduce_gradients(grads)
        finite = tf.constant(True)
        if loss_scaled:
            # Every replica sees the same verdict, so all skip (and lower the scale) or all apply together.
            finite = engine.all_finite(grads)
            grads = [tf.where(finite, g, tf.fill(tf.shape(g), float("nan"))) for g in grads]
        optimizer.apply(grads, variables)
        for v, before in zip(statistics, statistics_before):
            v.assign(tf.where(finite, v.value, before))
        stop = progress.stop_flag.read_value() if progress is not None else tf.constant(0.0)
        return tf.stack([loss_sum, correct, stop]), finite

    strategy = engine.strategy
    examples = micro_global * k

    @tf.function(autograph=False)  # graph ops throughout (tf.while_loop, tf.where): nothing to convert
    def train_step(iterator):
        images, labels = next(iterator)
        sums, finite = strategy.run(replica_step, args=(images, labels))
        if state.ema is not None:
            # A skipped update leaves the shadows alone too (all replicas share the verdict).
            applied = strategy.experimental_local_results(finite)[0] if loss_scaled else None
            state.ema.update(optimizer.iterations, applied=applied)
        sums = strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
        sums = engine.reduce_sums({"loss": sums[0], "top1": sums[1], "stop": sums[2]})
        metrics = {"loss": sums["loss"] / examples, "top1": sums["top1"] / examples,
                   # > 0 when any process of the run was asked to stop (the same value on every process).
                   "stop": sums["stop"]}
        if progress is not None:
            progress.count(metrics, examples)
        return metrics

    return train_step


def make_eval_step(model: keras.Model, engine: Engine):
    """Returns eval_step(batch) -> sums of loss, top-1 and top-5 hits and counted examples (mask > 0)."""

    def replica_step(images, labels, mask):
        logits = tf.cast(model(images, training=False), tf.float32)
        labels = tf.cast(labels, tf.int32)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        top5 = min(5, logits.shape[-1])
        hit1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
        hit5 = tf.cast(tf.math.in_top_k(labels, logits, top5), tf.float32)
        return {"loss": tf.reduce_sum(loss * mask), "top1": tf.reduce_sum(hit1 * mask),
                "top5": tf.reduce_sum(hit5 * mask), "count": tf.reduce_sum(mask)}

    strategy = engine.strategy

    @tf.function(autograph=False)
    def eval_step(batch):
        sums = strategy.run(replica_step, args=batch)
        return engine.reduce_sums({k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                                   for k, v in sums.items()})

    return eval_step
