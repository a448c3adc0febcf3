# shellcheck shell=bash
# Body of scripts/slurm/run_{B0,B4}_multinode.sub (sourced by them inside the batch job; see docs/slurm.md).
#
# One Slurm task per GPU (--ntasks-per-node = GPUs per node). Every task runs
#   python -m loops.parallel.slurm train.py <the recipe's flags>
# which builds MultiWorkerMirroredStrategy's cluster from Slurm's environment (SlurmClusterResolver: task i of
# node n gets GPU i and port PORT_BASE+i) and then trains; the per-GPU batch is the recipe's.
#
# Variables (environment at submission; sbatch passes it to the job):
#   PRECISION        AMP (default), TF32 or FP32
#   GPU              A100-80G (default) or V100-32G: picks the reference's batch per GPU
#   DATA_DIR         ImageNet TFRecords on the nodes                       (default /data)
#   OUTPUT_DIR       parent of the model dir                               (default $SLURM_SUBMIT_DIR/output)
#   MODEL_DIR        checkpoints and logs, on a filesystem every node sees
#                    (default $OUTPUT_DIR/<B0|B4>/<PRECISION>_multinode; a requeued job resumes from it)
#   CONTAINER_IMAGE  run each task in this image with pyxis/enroot (srun --container-image); unset: on the host
#   CONTAINER_MOUNTS extra --container-mounts entries (DATA_DIR:/data and MODEL_DIR:/results are always added)
#   CONTAINER_WORKDIR the repo inside the image                             (default /workspace/efficientnet)
#   REPO_DIR         the repo on the host (default $SLURM_SUBMIT_DIR; sbatch runs a copy of the .sub, so
#                    its own location is not the repo)
#   PYTHON           interpreter on the host (default <repo>/.venv/bin/python, else python3); in a container: python
#   TRAIN_ENTRY      entry point (default train.py)
#   SRUN_WAIT        seconds the other tasks get once one has exited before srun ends them (default 60)
#   SMOKE=1          the recipe's CPU smoke variant (tests/test_slurm.py)
#   EXTRA_ARGS       more train.py flags, appended (absl keeps the last value)
#
# Preemption (issue 7): the .sub asks for SIGUSR1 120 s before the time limit (--signal=USR1@120) and may be
# requeued (--requeue). Training saves a checkpoint on SIGUSR1/SIGTERM and exits with 75; this script then
# requeues the job (scontrol requeue), which restarts it from the latest checkpoint in MODEL_DIR. Exit codes of
# the batch job: 0 done, 75 requeued after preemption, anything else: the failure of the training step.

set -Eeuo pipefail
PREEMPTED_EXIT_CODE=75

multinode_main() {  # B0|B4
  local model=$1
  : "${SLURM_JOB_ID:?run this with sbatch (see docs/slurm.md)}"
  local repo=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
  [ -f "$repo/scripts/recipes/common.sh" ] \
    || { echo "multinode: $repo is not the repository: submit from its root or set REPO_DIR" >&2; exit 2; }
  # shellcheck source=../recipes/common.sh
  source "$repo/scripts/recipes/common.sh"

  local prec=${PRECISION:-AMP} gpu=${GPU:-A100-80G}
  local model_dir=${MODEL_DIR:-${OUTPUT_DIR:-$repo/output}/$model/${prec}_multinode}
  local data_dir=${DATA_DIR:-}
  smoke || data_dir=${DATA_DIR:-/data}
  mkdir -p "$model_dir"

  # Not --kill-on-bad-exit: on preemption every task gets the signal and exits 75 after the chief's checkpoint,
  # and killing the chief because a worker exited 75 first would lose that checkpoint. Instead, once the first
  # task ends the others get SRUN_WAIT seconds (well inside the 120 s of --signal) before srun ends them, so a
  # crashed worker cannot leave the rest blocked in a collective until the time limit.
  local srun_args=(--kill-on-bad-exit=0 --wait="${SRUN_WAIT:-60}") py workdir model_dir_task
  if [ -n "${CONTAINER_IMAGE:-}" ]; then
    # Paths as the tasks see them inside the container.
    local mounts="$model_dir:/results${data_dir:+,$data_dir:/data}${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
    workdir=${CONTAINER_WORKDIR:-/workspace/efficientnet}
    srun_args+=(--container-image="$CONTAINER_IMAGE" --container-mounts="$mounts" --container-workdir="$workdir")
    py=${PYTHON:-python}
    model_dir_task=/results
    [ -z "$data_dir" ] || data_dir=/data
  else
    workdir=$repo
    py=$(python_bin)
    model_dir_task=$model_dir
  fi

  DATA_DIR=$data_dir recipe_train_args "$model" "$prec" "$gpu" convergence "$model_dir_task"
  # shellcheck disable=SC2206
  local extra=(${EXTRA_ARGS:-})
  local cmd=("$py" -m loops.parallel.slurm "${TRAIN_ENTRY:-train.py}" "${TRAIN_ARGS[@]}" "${extra[@]}")

  echo "multinode: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}), ${SLURM_NNODES:-1} node(s) x" \
       "${SLURM_NTASKS_PER_NODE:-?} task(s) = ${SLURM_NTASKS:-1} workers; model dir $model_dir"
  echo "+ srun ${srun_args[*]} ${cmd[*]}"
  local rc=0
  # srun's exit code is the highest of its tasks': 75 from any worker means "preempted, requeue".
  (cd "$workdir" && srun "${srun_args[@]}" "${cmd[@]}") || rc=$?
  if [ "$rc" = "$PREEMPTED_EXIT_CODE" ]; then
    echo "multinode: training was preempted (exit $rc) after saving a checkpoint; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
  elif [ "$rc" != 0 ]; then
    echo "multinode: training failed with exit code $rc" >&2
  else
    echo "multinode: training finished"
  fi
  return "$rc"
}
