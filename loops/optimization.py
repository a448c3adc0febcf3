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


def create_optimizer(cfg: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    """RMSprop as in TF1 (epsilon inside the square root, which Keras 3 also does), SGD or AdamW.

    L2 regularization is added to the loss (see `l2_penalty`), so no optimizer here decays weights itself,
    except AdamW, whose decoupled decay is the point of choosing it.
    """
    if cfg.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(schedule, rho=cfg.rho, momentum=cfg.momentum, epsilon=cfg.epsilon)
    elif cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(schedule, momentum=cfg.momentum, nesterov=True)
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
