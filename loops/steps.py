"""The train and eval steps: small functions of (state, batch), built once per stage.

Train step, per replica: split the batch into k micro-batches; forward/backward each (the part XLA
compiles); sum their gradients; agree across replicas whether they are finite (fp16 only); apply once
(Keras sums gradients across replicas in `apply`: one reduction per update); then, across replicas, update
the EMA shadows.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from input import mix_batch
from loops.config import TrainConfig
from loops.ema import ExponentialMovingAverage
from loops.optimization import decayed_variables, l2_penalty
from loops.parallel.distribution import Engine
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


def make_train_step(state: TrainState, cfg: TrainConfig, *, mixup_alpha: float, cutmix_alpha: float):
    """Returns train_step(iterator) -> {"loss", "top1"} averaged over the update's examples (tensors: nothing
    waits for the step to finish until they are read)."""
    model, optimizer, engine = state.model, state.optimizer, state.engine
    k = cfg.grad_accum_steps
    replicas = engine.num_replicas
    micro_global = cfg.train_batch_size * replicas  # examples in one micro-batch across replicas
    variables = model.trainable_variables
    decayed = decayed_variables(model) if cfg.optimizer != "adamw" else []
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    defer_mixing = cfg.augment.defer_img_mixing and (mixup_alpha > 0 or cutmix_alpha > 0)

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = keras.losses.categorical_crossentropy(
                labels, logits, from_logits=True, label_smoothing=cfg.label_smoothing)
            # Scaled so that summing over k micro-batches and all replicas gives the mean over the update.
            data_loss = tf.reduce_sum(per_example) / (micro_global * k)
            loss = data_loss
            if decayed and cfg.weight_decay > 0:
                loss += l2_penalty(decayed, cfg.weight_decay) / (replicas * k)
            if loss_scaled:
                loss = optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        correct = _top_k_correct(tf.argmax(labels, -1), logits, 1)
        return grads, tf.reduce_sum(per_example), correct

    if cfg.use_xla:
        # Only the per-replica math is compiled; the gradient reduction stays outside XLA. Without XLA the
        # function is inlined: a nested tf.function cannot hold synchronized BatchNorm's cross-replica sums.
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images, labels):
        if defer_mixing:
            images, labels = mix_batch(images, labels, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                       seed=deferred_mixing_seed(cfg.seed, optimizer.iterations))
        if k == 1:
            grads, loss_sum, correct = forward_backward(images, labels)
        else:
            shape = tf.shape(images)
            images = tf.reshape(images, tf.concat([[k, shape[0] // k], shape[1:]], 0))
            labels = tf.reshape(labels, [k, -1, labels.shape[-1]])
            grads = [tf.zeros_like(v) for v in variables]
            loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
            for i in tf.range(k):
                micro_grads, micro_loss, micro_correct = forward_backward(images[i], labels[i])
                grads = [a + b for a, b in zip(grads, micro_grads)]
                loss_sum += micro_loss
                correct += micro_correct
        grads = engine.reduce_gradients(grads)
        if loss_scaled:
            # Every replica sees the same verdict, so all skip (and lower the scale) or all apply together.
            finite = engine.all_finite(grads)
            grads = [tf.where(finite, g, tf.fill(tf.shape(g), float("nan"))) for g in grads]
        optimizer.apply(grads, variables)
        return loss_sum, correct

    strategy = engine.strategy
    examples = float(micro_global * k)

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        loss_sum, correct = strategy.run(replica_step, args=(images, labels))
        if state.ema is not None:
            state.ema.update(optimizer.iterations)
        sums = engine.reduce_sums({"loss": strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
                                   "top1": strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)})
        metrics = {key: value / examples for key, value in sums.items()}
        if state.progress is not None:
            state.progress.count(metrics)
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

    @tf.function
    def eval_step(batch):
        sums = strategy.run(replica_step, args=batch)
        return engine.reduce_sums({k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                                   for k, v in sums.items()})

    return eval_step
