"""Exponential moving average of every model weight, BatchNorm statistics included.

Keras's optimizer-side EMA averages trainable variables only and has a fixed decay; the reference averages
BN moving statistics too, with the warm-up decay min(d, (1 + t) / (10 + t)), so the shadows live here.
"""

from __future__ import annotations

import tensorflow as tf


class ExponentialMovingAverage(tf.Module):
    def __init__(self, model, decay: float, strategy: tf.distribute.Strategy):
        super().__init__(name="ema")
        self.decay = decay
        self._strategy = strategy
        self._weights = [w.value for w in model.weights]
        # Weights of frozen layers (loops.freezing, applied before this) never change: their shadows keep the
        # value they start with and cost no update.
        frozen = {id(w) for layer in model.layers if not layer.trainable for w in layer.weights}
        self._followed = [i for i, w in enumerate(model.weights) if id(w) not in frozen]
        with strategy.scope():
            # Created under the strategy so each replica keeps its own copy next to the weight it follows.
            self.shadows = [tf.Variable(w, trainable=False, name=f"ema/{w.name.split(':')[0]}")
                            for w in self._weights]

    def decay_at(self, step) -> tf.Tensor:
        t = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + t) / (10.0 + t))

    def update(self, step, applied=None):
        """Called in cross-replica context after update number `step` (1 after the first update). `applied`: a
        boolean tensor, False when the step skipped its update (fp16 overflow); the shadows then stay as they are."""
        with tf.name_scope("ema"):  # so profiles (loops/bench/profiling.py) can tell its ops apart
            decay = self.decay_at(step)
            # d and 1 - d once per dtype, not once per weight: the same values, fewer ops to trace in every run's
            # step (docs/performance.md).
            factors = {}
            for shadow in self.shadows:
                if shadow.dtype not in factors:
                    d = tf.cast(decay, shadow.dtype)
                    factors[shadow.dtype] = (d, 1.0 - d)

            def average(shadow, weight):
                d, one_minus_d = factors[shadow.dtype]
                averaged = d * shadow + one_minus_d * tf.cast(weight, shadow.dtype)
                return shadow.assign(averaged if applied is None else tf.where(applied, averaged, shadow))

            for i in self._followed:
                self._strategy.extended.update(self.shadows[i], average, args=(self._weights[i],), group=False)

    def swap(self):
        """Exchange model weights and shadows; calling it twice restores both."""

        def exchange(shadow, weight):
            old = tf.identity(shadow)
            shadow.assign(weight)
            weight.assign(old)

        for shadow, weight in zip(self.shadows, self._weights):
            self._strategy.extended.update(shadow, exchange, args=(weight,), group=False)
