"""What every parallel engine offers the loop: the strategy, this process's place among the workers, and the
hooks through which every cross-process exchange goes (`synchronize`, `reduce_gradients`, `all_finite`,
`reduce_sums`, `barrier`, `input_context`). The defaults are tf.distribute's; Horovod overrides them
(loops/parallel/horovod_engine.py), and loops/parallel/distribution.py picks one.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass
class Engine:
    strategy: tf.distribute.Strategy
    name: str
    num_workers: int = 1
    worker_index: int = 0

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def input_context(self, ctx: tf.distribute.InputContext) -> tf.distribute.InputContext:
        """The shard of the data this process reads (Horovod replaces the strategy's single pipeline)."""
        return ctx

    def synchronize(self, variables):
        """Make every process start from the same state (mirrored variables already are)."""

    def reduce_sums(self, sums: dict) -> dict:
        """Sums already reduced over this process's replicas, reduced over all processes."""
        return sums

    def barrier(self):
        """Returns once every process got here."""

    def reduce_gradients(self, grads):
        # tf.distribute: the Keras optimizer all-reduces (SUM) when applied in a replica context.
        return grads

    def all_finite(self, grads) -> tf.Tensor:
        """True on every replica iff every replica's gradients are finite (so all replicas agree to skip)."""
        local = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        ctx = tf.distribute.get_replica_context()
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(local, tf.float32))
        return tf.equal(bad, 0.0)
