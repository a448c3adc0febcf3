"""Where a run is and how it goes, counted by the train step in graph variables, so the host reads them only
when it acts on them (logging, checkpointing, the non-finite check) instead of waiting for every step.

The position is kept in training examples, not steps: a run resumed with another per-replica batch, replica or
worker count, or --grad_accum_steps continues on the same example clock (docs/training_loop.md).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class RunShape:
    """How a run splits its updates, kept in its checkpoints so a resume can tell what changed."""

    per_replica_batch: int
    replicas: int
    grad_accum_steps: int
    input_pipelines: int  # processes reading data: workers (TF_CONFIG) or ranks (Horovod)
    steps_per_epoch: int

    @property
    def global_batch(self) -> int:
        return self.per_replica_batch * self.replicas * self.grad_accum_steps

    @property
    def epoch_examples(self) -> int:
        return self.steps_per_epoch * self.global_batch

    def steps_done(self, examples_in_epoch: int) -> int:
        """Steps of this shape that count as done in an epoch `examples_in_epoch` into it: its remaining steps
        are the whole global batches that still fit (a partial one at the end is dropped, as in every epoch)."""
        if examples_in_epoch >= self.epoch_examples:
            return self.steps_per_epoch
        return self.steps_per_epoch - (self.epoch_examples - examples_in_epoch) // self.global_batch

    def changes_from(self, saved: RunShape) -> list[str]:
        labels = {"per_replica_batch": "per-replica batch", "replicas": "replicas",
                  "grad_accum_steps": "--grad_accum_steps", "input_pipelines": "workers",
                  "steps_per_epoch": "steps per epoch"}
        return [f"{label} {getattr(saved, name)} -> {getattr(self, name)}" for name, label in labels.items()
                if getattr(saved, name) != getattr(self, name)]


class Progress(tf.Module):
    """Checkpointed: `epoch` (completed epochs), `examples_in_epoch` and `examples_seen` (training examples
    consumed in the current epoch and in all) and `run_shape` (the RunShape that wrote them). Not
    checkpointed: the streak of non-finite losses, the epoch's running sums and this process's stop flag."""

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__(name="progress")
        with strategy.scope():
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.examples_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_in_epoch")
            self.examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")
            self.run_shape = tf.Variable(tf.zeros([5], tf.int64), trainable=False, name="run_shape")
            self.bad_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_streak")
            self._sums = {key: tf.Variable(0.0, trainable=False, name=f"epoch_{key}_sum") for key in ("loss", "top1")}
            self._finite_steps = tf.Variable(0.0, trainable=False, name="epoch_finite_steps")
            # 1 once this process was asked to stop; the train step sums it over all processes (loops.steps).
            self.stop_flag = tf.Variable(0.0, trainable=False, name="stop_flag")

    def checkpointed(self) -> dict[str, tf.Variable]:
        return {"epoch": self.epoch, "examples_in_epoch": self.examples_in_epoch,
                "examples_seen": self.examples_seen, "run_shape": self.run_shape}

    def count(self, metrics: dict, examples: int):
        """Inside the train step, in cross-replica context, after the update of `examples` examples."""
        finite = tf.math.is_finite(metrics["loss"])
        self.examples_in_epoch.assign_add(examples)
        self.examples_seen.assign_add(examples)
        self.bad_streak.assign(tf.where(finite, tf.zeros_like(self.bad_streak), self.bad_streak + 1))
        for key, total in self._sums.items():
            total.assign_add(tf.where(finite, tf.cast(metrics[key], tf.float32), 0.0))
        self._finite_steps.assign_add(tf.cast(finite, tf.float32))

    def clock_step(self, shape: RunShape) -> tf.Tensor:
        """The position as a step of `shape`: epochs done x its steps per epoch + this epoch's examples / its global
        batch. It equals the update count of a run that never changed shape, and is fractional after a resume
        with another global batch (float64: exact for any realistic count)."""
        return (tf.cast(self.epoch, tf.float64) * shape.steps_per_epoch
                + tf.cast(self.examples_in_epoch, tf.float64) / shape.global_batch)

    def on_clock(self, schedule, shape: RunShape):
        """The learning rate for the optimizer: `schedule` (a function of the step) read on the example clock
        instead of the optimizer's update count."""
        return lambda: schedule(self.clock_step(shape))

    def saved_shape(self) -> RunShape | None:
        """The shape recorded by the restored checkpoint (None for a fresh run)."""
        values = [int(v) for v in self.run_shape.numpy()]
        return RunShape(*values) if any(values) else None

    def record_shape(self, shape: RunShape):
        self.run_shape.assign(dataclasses.astuple(shape))

    def start_epoch(self, epoch: int, examples_in_epoch: int = 0):
        self.epoch.assign(epoch)
        self.examples_in_epoch.assign(examples_in_epoch)
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
