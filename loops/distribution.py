"""Who computes where, and who reduces gradients: the seam between the loop and the parallel engine.

The loop only calls `engine.reduce_gradients` and `engine.all_finite` inside a replica function; whether
that is a no-op (tf.distribute: Keras's `optimizer.apply` sums gradients across replicas itself, once per
call, so once per accumulated update) or an explicit allreduce (Horovod) is the engine's business.
"""

from __future__ import annotations

import dataclasses
import json
import os

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

    def reduce_gradients(self, grads):
        # tf.distribute: the Keras optimizer all-reduces (SUM) when applied in a replica context.
        return grads

    def all_finite(self, grads) -> tf.Tensor:
        """True on every replica iff every replica's gradients are finite (so all replicas agree to skip)."""
        local = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        ctx = tf.distribute.get_replica_context()
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(local, tf.float32))
        return tf.equal(bad, 0.0)


def _multi_worker_from_tf_config() -> tuple[int, int] | None:
    config = os.environ.get("TF_CONFIG")
    if not config:
        return None
    try:
        spec = json.loads(config)
        cluster, task = spec["cluster"], spec["task"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG is not valid JSON with 'cluster' and 'task': {e}") from None
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    index = task["index"] + (len(cluster.get("chief", [])) if task["type"] == "worker" else 0)
    return workers, index


def create_engine() -> Engine:
    """One device, MirroredStrategy over all local GPUs, or MultiWorkerMirroredStrategy from TF_CONFIG."""
    multi = _multi_worker_from_tf_config()
    if multi and multi[0] > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Engine(strategy, "multi_worker_mirrored", num_workers=multi[0], worker_index=multi[1])
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return Engine(tf.distribute.MirroredStrategy([d.name for d in gpus]), "mirrored")
    device = gpus[0].name if gpus else "/cpu:0"
    return Engine(tf.distribute.OneDeviceStrategy(device), "one_device")


def mirrored_engine(devices: list[str]) -> Engine:
    """Several explicit local devices (tests use two logical CPUs)."""
    return Engine(tf.distribute.MirroredStrategy(devices), "mirrored")
