"""Learning-rate schedule, optimizer and the L2 penalty of the reference recipe."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from loops.config import TrainConfig


def global_batch_size(cfg: TrainConfig, num_replicas: int) -> int:
    """Examples per optimizer update: per-replica batch x replicas x accumulation steps."""
    return cfg.train_batch_size * num_replicas * cfg.grad_accum_steps


def peak_learning_rate(cfg: TrainConfig, num_replicas: int) -> float:
    return cfg.lr_init * global_batch_size(cfg, num_replicas) / 128.0


@keras.saving.register_keras_serializable("efficientnet_tf2")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then cosine to 0 or exponential (`rate` every `decay_steps`).

    Keras's CosineDecay has a warmup but ExponentialDecay has none; one small schedule serves both so the
    two recipes (NVIDIA cosine, tensorflow/tpu exponential 0.97 per 2.4 epochs) share the warmup.
    """

    def __init__(self, peak, warmup_steps, total_steps, kind="cosine", rate=0.97, decay_steps=1):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)
        self.kind, self.rate, self.decay_steps = kind, float(rate), float(decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(self.warmup_steps, tf.float32)
        after = tf.maximum(step - warmup, 0.0)
        if self.kind == "cosine":
            span = tf.maximum(tf.cast(self.total_steps - self.warmup_steps, tf.float32), 1.0)
            decayed = 0.5 * self.peak * (1.0 + tf.cos(math.pi * tf.minimum(after / span, 1.0)))
        else:
            decayed = self.peak * tf.pow(self.rate, tf.floor(after / self.decay_steps))
        warming = self.peak * step / tf.maximum(warmup, 1.0)
        return tf.where(step < warmup, warming, decayed)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                    kind=self.kind, rate=self.rate, decay_steps=self.decay_steps)


def learning_rate_schedule(cfg: TrainConfig, num_replicas: int, steps_per_epoch: int) -> WarmupDecay:
    return WarmupDecay(
        peak=peak_learning_rate(cfg, num_replicas),
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        total_steps=cfg.max_epochs * steps_per_epoch,
        kind=cfg.lr_decay,
        rate=cfg.lr_decay_rate,
        decay_steps=cfg.lr_decay_epochs * steps_per_epoch,
    )


def _handle(variable) -> tf.Tensor:
    """The resource handle of a Keras variable or of the tf.Variable inside it (inside a distribution
    strategy's update, a distributed variable's handle is the one on the device being updated)."""
    return getattr(variable, "value", variable).handle


# Keras 3 writes each variable's update as separate ops (RMSprop: about ten). TensorFlow has the same updates as
# one fused kernel per variable, the ones Keras 2's and TF1's optimizers ran, and XLA compiles them. Same slots,
# same checkpoints, the same arithmetic up to float rounding (the hyperparameters reach the kernel rounded as
# Keras's ops round them: in float64, a cast of a Python float goes through float32, a constant does not); a step
# runs one op per variable instead of several, and traces in a fraction of the time (docs/performance.md).
class RMSprop(keras.optimizers.RMSprop):
    """Keras's RMSprop; with momentum and uncentered (the recipe), each update is ResourceApplyRMSProp."""

    def update_step(self, gradient, variable, learning_rate):
        if self.centered or not self.momentum:
            return super().update_step(gradient, variable, learning_rate)
        i = self._get_variable_index(variable)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyRMSProp(
            var=variable.handle, ms=_handle(self._velocities[i]), mom=_handle(self._momentums[i]),
            lr=tf.cast(learning_rate, dtype), rho=tf.constant(self.rho, dtype),
            momentum=tf.constant(self.momentum, dtype), epsilon=tf.constant(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


class SGD(keras.optimizers.SGD):
    """Keras's SGD; with momentum, each update is ResourceApplyKerasMomentum (Nesterov or not, as Keras's)."""

    def update_step(self, gradient, variable, learning_rate):
        if not self.momentum:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=_handle(self.momentums[self._get_variable_index(variable)]),
            # Cast, as Keras's SGD casts it (RMSprop above uses its floats as they are, as Keras's RMSprop does).
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)


def create_optimizer(cfg: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    """RMSprop as in TF1 (epsilon inside the square root, which Keras 3 also does), SGD or AdamW.

    L2 regularization is added to the loss (see `l2_penalty`), so no optimizer here decays weights itself,
    except AdamW, whose decoupled decay is the point of choosing it.
    """
    if cfg.optimizer == "rmsprop":
        opt = RMSprop(schedule, rho=cfg.rho, momentum=cfg.momentum, epsilon=cfg.epsilon)
    elif cfg.optimizer == "sgd":
        opt = SGD(schedule, momentum=cfg.momentum, nesterov=True)
    else:
        opt = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, beta_1=cfg.beta_1,
                                     beta_2=cfg.beta_2, epsilon=cfg.epsilon)
    if cfg.precision == "amp_fp16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def decayed_variables(model: keras.Model) -> list:
    """Every conv (depthwise included) and dense kernel and bias; no BatchNorm parameter."""
    batch_norm = {id(w) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
                  for w in layer.weights}
    return [v for v in model.trainable_variables if id(v) not in batch_norm]


def l2_penalty(variables, weight_decay: float) -> tf.Tensor:
    """weight_decay * sum(w^2): the reference's 5e-6 equals 1e-5 * sum(w^2) / 2."""
    with tf.name_scope("l2_penalty"):  # so profiles (loops/bench/profiling.py) can tell its ops apart
        return weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
