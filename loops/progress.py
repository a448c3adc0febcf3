"""Where a run is and how it goes, counted by the train step in graph variables, so the host reads them only
when it acts on them (logging, checkpointing, the non-finite check) instead of waiting for every step.
"""

from __future__ import annotations

import tensorflow as tf


class Progress(tf.Module):
    """`epoch` (completed epochs) and `batch_in_epoch` (steps done in the current one) go into checkpoints, so a
    preempted run resumes mid-epoch; the streak of non-finite losses and the epoch's running sums do not."""

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__(name="progress")
        with strategy.scope():
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.batch_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
            self.bad_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_streak")
            self._sums = {key: tf.Variable(0.0, trainable=False, name=f"epoch_{key}_sum") for key in ("loss", "top1")}
            self._finite_steps = tf.Variable(0.0, trainable=False, name="epoch_finite_steps")

    def count(self, metrics: dict):
        """Inside the train step, in cross-replica context, after the update."""
        finite = tf.math.is_finite(metrics["loss"])
        self.batch_in_epoch.assign_add(1)
        self.bad_streak.assign(tf.where(finite, tf.zeros_like(self.bad_streak), self.bad_streak + 1))
        for key, total in self._sums.items():
            total.assign_add(tf.where(finite, metrics[key], 0.0))
        self._finite_steps.assign_add(tf.cast(finite, tf.float32))

    def start_epoch(self, epoch: int, batch_in_epoch: int = 0):
        self.epoch.assign(epoch)
        self.batch_in_epoch.assign(batch_in_epoch)
        for total in self._sums.values():
            total.assign(0.0)
        self._finite_steps.assign(0.0)

    def epoch_means(self) -> dict:
        """Mean loss and top-1 over the finite steps of this epoch so far (of this process's run of it)."""
        n = max(float(self._finite_steps.numpy()), 1.0)
        return {key: float(total.numpy()) / n for key, total in self._sums.items()}

    @property
    def streak(self) -> int:
        return int(self.bad_streak.numpy())
