"""Who computes where, and who reduces gradients: the seam between the loop and the parallel engine.

The loop only calls `engine.reduce_gradients` and `engine.all_finite` inside a replica function; whether
that is a no-op (tf.distribute: Keras's `optimizer.apply` sums gradients across replicas itself, once per
call, so once per accumulated update) or an explicit allreduce (Horovod) is the engine's business.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from loops.config import ENGINES
from loops.parallel.engine import Engine
from loops.parallel.horovod_engine import HorovodEngine
from loops.parallel.slurm import export_tf_config


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


def under_horovodrun() -> bool:
    """horovodrun (Gloo) gives every rank HOROVOD_RANK and HOROVOD_SIZE (docs/horovod.md)."""
    return bool(os.environ.get("HOROVOD_RANK") and os.environ.get("HOROVOD_SIZE"))


def create_engine(engine: str = "auto", *, fp16_allreduce: bool = False, collective_timeout_s: float | None = None,
                  sync_bn: bool = False) -> Engine:
    """Horovod under horovodrun (or --engine horovod); else one device, MirroredStrategy over all local GPUs,
    or MultiWorkerMirroredStrategy from TF_CONFIG or, in a multi-task srun step, from Slurm's environment."""
    if engine not in ENGINES:
        raise ValueError(f"--engine={engine!r}: must be one of {', '.join(ENGINES)}")
    if engine == "horovod" or (engine == "auto" and under_horovodrun()):
        if sync_bn:
            # Keras's synchronized BatchNorm all-reduces through the tf.distribute replica context, which
            # under Horovod spans one device: it would silently normalize per rank. Refuse instead.
            raise ValueError("--mparams sync_bn=True is not supported with --engine horovod (Keras's "
                             "synchronized BatchNorm only reduces within a tf.distribute strategy); drop "
                             "sync_bn or use --engine tf_distribute (MirroredStrategy / TF_CONFIG)")
        return HorovodEngine(fp16_allreduce=fp16_allreduce, timeout_s=collective_timeout_s)
    if fp16_allreduce:
        raise ValueError("--hvd_fp16_allreduce only applies to --engine horovod (run under horovodrun)")
    if not os.environ.get("TF_CONFIG"):  # set by the user or by the `python -m loops.parallel.slurm` wrapper
        export_tf_config()  # a plain `srun python train.py` with several tasks: the cluster from Slurm
    multi = _multi_worker_from_tf_config()
    if multi and multi[0] > 1:
        # A killed worker fails the others at once (its channel closes) and TF's coordination service notices
        # a frozen one by its missing heartbeats (10-20 s measured); the timeout bounds every collective
        # explicitly (docs/distributed.md).
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        return MultiWorkerEngine(strategy, "multi_worker_mirrored", num_workers=multi[0], worker_index=multi[1])
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return Engine(tf.distribute.MirroredStrategy([d.name for d in gpus]), "mirrored")
    device = gpus[0].name if gpus else "/cpu:0"
    return Engine(tf.distribute.OneDeviceStrategy(device), "one_device")


def engine_for(cfg) -> Engine:
    """The engine a TrainConfig asks for (--engine, --hvd_fp16_allreduce, --collective_timeout_s)."""
    return create_engine(cfg.engine, fp16_allreduce=cfg.hvd_fp16_allreduce,
                         collective_timeout_s=cfg.collective_timeout_s,
                         sync_bn=bool(cfg.model_overrides.get("sync_bn", False)))


class MultiWorkerEngine(Engine):
    """MultiWorkerMirroredStrategy: variables are mirrored, but each worker restores its checkpoint on its
    own; a non-shared or lagging --model_dir would let workers resume from different steps."""

    def synchronize(self, variables):
        # Broadcast the chief's values as a SUM all-reduce in which only the chief's first replica contributes
        # (a worker with several GPUs runs several replicas, which would otherwise each add their copy).
        strategy, chief = self.strategy, 1.0 if self.is_chief else 0.0
        local_replicas = len(strategy.extended.worker_devices)  # contiguous replica ids per worker
        variables = list(variables)

        @tf.function(autograph=False)
        def broadcast():
            def replica_fn():
                ctx = tf.distribute.get_replica_context()
                first = tf.equal(ctx.replica_id_in_sync_group % local_replicas, 0)
                keep = chief * tf.cast(first, tf.float64)
                # One dtype for the whole group (all_reduce packs it into one tensor); float64 holds every
                # float32 value and every counter below 2**53 exactly, so the round trip is lossless.
                return ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                      [tf.cast(tf.convert_to_tensor(v), tf.float64) * keep for v in variables])
            return strategy.run(replica_fn)

        values = broadcast()
        for v, value in zip(variables, values):
            # Keras variables report their dtype by name.
            v.assign(tf.cast(strategy.experimental_local_results(value)[0], tf.as_dtype(v.dtype)))


    def barrier(self):
        strategy = self.strategy

        @tf.function(autograph=False)
        def all_here():
            return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.constant(1.0)))

        all_here()


def mirrored_engine(devices: list[str]) -> Engine:
    """Several explicit local devices (tests use two logical CPUs)."""
    return Engine(tf.distribute.MirroredStrategy(devices), "mirrored")
