"""Multi-worker training from Slurm's environment: one TensorFlow worker per `srun` task.

Two ways in:

* `slurm_cluster_resolver_or_none()` -> a `SlurmClusterResolver` for `tf.distribute.MultiWorkerMirroredStrategy(
  cluster_resolver=...)` when this process is one of several tasks of an `srun` step, else None. Meant to be
  called by `loops.parallel.distribution.create_engine` when there is no TF_CONFIG (and no Horovod), before TensorFlow
  touches the GPUs: the resolver sets CUDA_VISIBLE_DEVICES to this task's share of the node.
* `python -m loops.parallel.slurm train.py [flags...]` (what scripts/slurm/*.sub run under srun): resolves the same
  cluster, exports it as TF_CONFIG and runs the entry point in this process, so the TF_CONFIG path of the engine
  starts MultiWorkerMirroredStrategy whether or not the engine knows about Slurm.

On nodes without GPUs the stock resolver cannot be used as is: left alone it runs nvidia-smi (and fails), and
with gpus_per_node=0 its cluster_spec() builds `range(0, 0, 0)` and raises. `_CpuSlurmClusterResolver` lays
out ports as if each task had one device and reports no accelerators, so the strategy uses the CPU.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys

# Environment knobs (documented in docs/slurm.md).
PORT_BASE_ENV = "EFFICIENTNET_SLURM_PORT_BASE"   # first port of a node's workers
GPUS_PER_NODE_ENV = "EFFICIENTNET_SLURM_GPUS_PER_NODE"   # override GPU discovery (0 = CPU only)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value.split("(")[0].split(":")[-1])   # SLURM_*_PER_NODE may read "8(x4)" or "a100:8"
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def in_slurm_step() -> bool:
    """True inside a task launched by srun with more than one task (a plain sbatch shell is not a step)."""
    return ("SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ
            and (_int_env("SLURM_STEP_NUM_TASKS") or _int_env("SLURM_NTASKS") or 1) > 1)


def port_base() -> int:
    """Ports per job, so two jobs sharing a node (OverSubscribe, or tests) do not collide on 8888.

    20000 + 32 * (job id mod 1000): a job gets 32 consecutive ports (one per task on a node), all below 52000.
    """
    explicit = _int_env(PORT_BASE_ENV)
    if explicit is not None:
        return explicit
    job = _int_env("SLURM_JOB_ID") or 0
    return 20000 + 32 * (job % 1000)


def gpus_per_node() -> int | None:
    """GPUs on this node without importing TensorFlow's GPU runtime (CUDA_VISIBLE_DEVICES must be set first).

    None means "let the resolver ask nvidia-smi"; 0 means a CPU node.
    """
    explicit = _int_env(GPUS_PER_NODE_ENV)
    if explicit is not None:
        return explicit
    # Set by Slurm when the job asked for GPUs (--gpus-per-node, --gres=gpu:N); absent on CPU partitions.
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        n = _int_env(name)
        if n:
            return n
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return None if shutil.which("nvidia-smi") else 0


def _resolver_classes():
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import SlurmClusterResolver

    class _CpuSlurmClusterResolver(SlurmClusterResolver):
        """Slurm tasks on nodes without GPUs: one port per task, no accelerators, CUDA_VISIBLE_DEVICES untouched."""

        def __init__(self, **kwargs):
            # One pretend device per task only so the parent's port/GPU zip yields one address per task.
            tasks = _int_env("SLURM_STEP_NUM_TASKS") or _int_env("SLURM_NTASKS") or 1
            super().__init__(gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False, **kwargs)

        def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
            return {}

    return SlurmClusterResolver, _CpuSlurmClusterResolver


def slurm_cluster_resolver_or_none():
    """A SlurmClusterResolver for this srun task (GPU or CPU node), or None outside a multi-task srun step."""
    if not in_slurm_step():
        return None
    gpu_cls, cpu_cls = _resolver_classes()
    gpus = gpus_per_node()
    if gpus == 0:
        resolver = cpu_cls(port_base=port_base())
    else:
        # gpus None: the resolver counts them with nvidia-smi; it then gives each task gpus // tasks_per_node
        # GPUs and sets CUDA_VISIBLE_DEVICES accordingly (in cluster_spec(), called below).
        resolver = gpu_cls(port_base=port_base(), gpus_per_node=gpus, auto_set_gpu=True)
    resolver.cluster_spec()   # resolves task_type/task_id and, on GPU nodes, this task's CUDA_VISIBLE_DEVICES
    return resolver


def tf_config_from_slurm() -> dict | None:
    """The TF_CONFIG equivalent of this srun task's cluster, or None outside a multi-task srun step."""
    resolver = slurm_cluster_resolver_or_none()
    if resolver is None:
        return None
    task_type, task_id = resolver.get_task_info()
    return {"cluster": resolver.cluster_spec().as_dict(), "task": {"type": task_type, "index": task_id}}


def export_tf_config() -> None:
    """Inside a multi-task srun step, sets TF_CONFIG from Slurm's environment (unless already set), so that
    MultiWorkerMirroredStrategy finds its cluster. Must run before TensorFlow initializes its devices: on
    GPU nodes the resolver also sets this task's CUDA_VISIBLE_DEVICES."""
    config = tf_config_from_slurm()
    if config is None:
        return
    if os.environ.get("TF_CONFIG"):
        print("loops.parallel.slurm: TF_CONFIG is already set; leaving it as is", file=sys.stderr)
        return
    os.environ["TF_CONFIG"] = json.dumps(config)
    print(f"loops.parallel.slurm: worker {config['task']['index']} of "
          f"{len(config['cluster']['worker'])}: {config['cluster']['worker']}", file=sys.stderr)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m loops.parallel.slurm ENTRY_POINT.py [flags...]  (under srun: exports TF_CONFIG from "
              "Slurm's environment, then runs ENTRY_POINT.py in this process)")
        sys.exit(0 if argv else 2)
    export_tf_config()
    script = argv[0]
    sys.argv = argv
    # The entry point's own directory first on sys.path, as `python script.py` would have it.
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
