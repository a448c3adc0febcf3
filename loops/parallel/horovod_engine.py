"""Horovod: one process per device, gradients all-reduced explicitly (Gloo on CPU, NCCL on GPU builds).

Horovod itself is imported only when this engine is built, so users without Horovod never import it. Each process
runs a OneDeviceStrategy on its own device; every cross-process exchange goes through the Engine hooks
(`synchronize`, `reduce_gradients`, `all_finite`, `reduce_sums`, `input_context`).
"""

from __future__ import annotations

import os

import tensorflow as tf

import input as data
from loops.parallel.engine import Engine


def _import_horovod():
    try:
        import horovod.tensorflow as hvd
    except ImportError as e:
        raise RuntimeError(f"--engine horovod needs Horovod, which is not importable ({e}); build it with "
                           "scripts/install_horovod.sh (docs/horovod.md) or use --engine tf_distribute") from None
    return hvd


def horovod_timeouts(timeout_s: float) -> dict[str, str]:
    """The Horovod settings --collective_timeout_s stands for (read at hvd.init). A rank that stops responding
    (frozen, its host gone) fails Gloo's wait after the timeout. A rank that is alive but never submits the
    next allreduce (stuck reading data, a deadlock) is what Horovod's stall inspector watches (with the Gloo
    fix of scripts/install_horovod.sh): it warns after half the timeout and shuts Horovod down, failing every
    rank, once the stall passes the timeout. It looks every half timeout and first moves a stalled step's
    allreduce out of Horovod's response cache, so the run ends 1.5 to 2.5 timeouts into the stall."""
    seconds = max(2, int(round(timeout_s)))
    return {"HOROVOD_GLOO_TIMEOUT_SECONDS": str(seconds),
            "HOROVOD_STALL_CHECK_TIME_SECONDS": str(seconds // 2),
            "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(seconds)}


class HorovodEngine(Engine):
    def __init__(self, *, fp16_allreduce: bool = False, timeout_s: float | None = None):
        if not (os.environ.get("HOROVOD_RANK") and os.environ.get("HOROVOD_SIZE")):
            # Without horovodrun's rendezvous variables a Gloo-only build cannot initialize; say so plainly.
            raise RuntimeError("--engine horovod must run under horovodrun (HOROVOD_RANK/HOROVOD_SIZE are not "
                               "set), e.g. `horovodrun -np 2 -H localhost:2 --gloo python train.py ...`")
        if timeout_s is not None:
            os.environ.update(horovod_timeouts(timeout_s))
        hvd = _import_horovod()
        hvd.init()
        self._hvd = hvd
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            # One GPU per process: the one of this host's local rank.
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.set_visible_devices(gpu, "GPU")
            tf.config.experimental.set_memory_growth(gpu, True)
            device = "/gpu:0"
        else:
            device = "/cpu:0"
        super().__init__(tf.distribute.OneDeviceStrategy(device), "horovod", num_workers=hvd.size(),
                         worker_index=hvd.rank())
        self.compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none

    @property
    def num_replicas(self) -> int:
        # One replica per process: the global batch and the loss normalization count every rank.
        return self._hvd.size()

    def input_context(self, ctx: tf.distribute.InputContext) -> tf.distribute.InputContext:
        # The strategy sees one device and would give every rank the whole data; shard by rank instead.
        return data.worker_input_context(self._hvd.rank(), self._hvd.size())

    def synchronize(self, variables):
        # Keras 3 variables have no .ref(), which Horovod needs; their .value is the backing tf.Variable.
        # Plain tf.Variables (EMA shadows, the epoch counter) are passed as they are.
        plain = [getattr(v, "value", v) if not isinstance(v, tf.Variable) else v for v in variables]
        self._hvd.broadcast_variables(plain, root_rank=0)

    def reduce_gradients(self, grads):
        # Sum, not Average: the loss is already divided by the global batch (all ranks' examples). The
        # default strategy's optimizer.apply then reduces over its single replica, i.e. not again.
        # One grouped allreduce instead of one per tensor: a single negotiation round per step.
        return self._hvd.grouped_allreduce(list(grads), op=self._hvd.Sum, compression=self.compression)

    def all_finite(self, grads) -> tf.Tensor:
        local = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        bad = self._hvd.allreduce(1.0 - tf.cast(local, tf.float32), op=self._hvd.Sum, name="not_finite_count")
        return tf.equal(bad, 0.0)

    def barrier(self):
        self._hvd.allreduce(tf.constant(0.0), op=self._hvd.Sum, name="barrier")

    def reduce_sums(self, sums: dict) -> dict:
        keys = sorted(sums)
        # One allreduce of all metric sums stacked (float64 keeps example counts exact).
        stacked = tf.stack([tf.cast(sums[k], tf.float64) for k in keys])
        total = self._hvd.allreduce(stacked, op=self._hvd.Sum, name="metric_sums")
        return {k: tf.cast(total[i], sums[k].dtype) for i, k in enumerate(keys)}
