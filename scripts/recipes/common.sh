# shellcheck shell=bash
# The one launcher behind every recipe in scripts/recipes/ (and the argument builder of scripts/slurm/*.sub).
# A recipe file only names its model, precision, GPU type and job, e.g.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../../../common.sh"
#   recipe_main train B0 AMP A100-80G convergence "$@"
#
# The hyperparameters are the published recipe (docs/recipes.md), written here once.
#
# Environment overrides (all optional):
#   DATA_DIR     ImageNet TFRecords (train-*, validation-*) or a TFDS/image-folder dir   (default /data)
#   OUTPUT_DIR   parent of the default model dirs                          (default <repo>/output)
#   MODEL_DIR    checkpoints/logs of this run (default $OUTPUT_DIR/<B0|B4>/<PRECISION>_8x<GPU>, shared by the
#                convergence and evaluation recipes of the same precision and GPU)
#   NUM_GPUS     GPUs used on this node (default 8)
#   ENGINE       tf_distribute (default: one process, MirroredStrategy over NUM_GPUS GPUs) or horovod
#                (horovodrun -np NUM_GPUS, one process per GPU; needs scripts/install_horovod.sh)
#   XLA          1 (default) compiles the train step with XLA; 0 drops --use_xla
#   INFER_DIR    images classified by the inference recipes               (default /infer_data/images)
#   PYTHON       interpreter (default <repo>/.venv/bin/python if present, else python3)
#   SMOKE=1      tiny CPU run of the same recipe: demo data, 32 px, 2 steps, 1 process, fp32, no XLA, small
#                batches, model dirs under $OUTPUT_DIR/smoke/ (tests/test_scripts.py runs every recipe so)
#   DRY_RUN=1    print the command instead of running it
# Arguments after the recipe's own are appended to the command, so any flag can be overridden
# (absl keeps the last value): ... convergence_8xA100-80G.sh --max_epochs 350
#
# Exit codes: the entry point's. 75 (EX_TEMPFAIL) means the run was preempted (SIGTERM/SIGUSR1), saved a
# checkpoint and wants to be restarted: rerunning the same recipe resumes from $MODEL_DIR.

set -Eeuo pipefail

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$RECIPES_DIR/../.." && pwd)
PREEMPTED_EXIT_CODE=75

# --- The reference's recipe, as data ------------------------------------------------------------------------
declare -A ARCH=([B0]=efficientnet-b0 [B4]=efficientnet-b4)
declare -A IMG_SIZE=([B0]=224 [B4]=380)                 # train and eval resolution
# Batch per GPU: the largest that fits each GPU's memory in the reference (same for every precision).
declare -A BATCH_PER_GPU=([B0,A100-80G]=1024 [B0,V100-32G]=512 [B4,A100-80G]=160 [B4,V100-32G]=64)
declare -A AUGMENT_ARGS=(
  [B0]="--augmenter_name autoaugment"
  # B4 adds mixup 0.2, mixed on the accelerator inside the train step so the CPU pipeline does not starve it.
  [B4]="--augmenter_name autoaugment --mixup_alpha 0.2 --defer_img_mixing"
)
declare -A PRECISION_FLAG=([AMP]=amp_fp16 [TF32]=tf32 [FP32]=fp32)
GPU_TYPES="A100-80G V100-32G"

# Optimizer, schedule and regularization shared by B0 and B4 (lr_init is per 128 images, scaled by the global
# batch in the code). Spelled out rather than left to defaults so a changed default cannot change a recipe.
COMMON_TRAIN_ARGS=(--max_epochs 500 --warmup_epochs 5 --lr_decay cosine --lr_init 0.005 --optimizer rmsprop
                   --rho 0.9 --momentum 0.9 --opt_epsilon 0.001 --weight_decay 5e-6 --label_smoothing 0.1
                   --moving_average_decay 0.9999 --save_checkpoint_freq 10 --epochs_between_evals 10
                   --log_steps 100)

die() { echo "recipes: ERROR: $*" >&2; exit 2; }

_check() {  # model precision [gpu]
  [ -n "${ARCH[$1]:-}" ] || die "unknown model '$1' (B0 or B4)"
  [ -n "${PRECISION_FLAG[$2]:-}" ] || die "unknown precision '$2' (AMP, TF32 or FP32)"
  if [ -n "${3:-}" ]; then [ -n "${BATCH_PER_GPU[$1,$3]:-}" ] || die "unknown GPU type '$3' ($GPU_TYPES)"; fi
}

smoke() { [ "${SMOKE:-0}" = 1 ]; }

_data_args() {
  # Smoke runs use the embedded demo dataset unless DATA_DIR is given explicitly.
  local dir=${DATA_DIR-}
  smoke || dir=${DATA_DIR:-/data}
  [ -z "$dir" ] || echo "--data_dir $dir"
}

default_model_dir() {  # model precision gpu
  if smoke; then echo "${OUTPUT_DIR:-$REPO_ROOT/output}/smoke/$1"   # one model dir per model: later runs resume
  else echo "${OUTPUT_DIR:-$REPO_ROOT/output}/$1/$2_8x$3"; fi
}

# recipe_train_args MODEL PRECISION GPU convergence|benchmark MODEL_DIR -> TRAIN_ARGS (array) for train.py
recipe_train_args() {
  local model=$1 prec=$2 gpu=$3 job=$4 model_dir=$5
  _check "$model" "$prec" "$gpu"
  local size=${IMG_SIZE[$model]} batch=${BATCH_PER_GPU[$model,$gpu]} precision=${PRECISION_FLAG[$prec]}
  # shellcheck disable=SC2206  # word splitting of the flag strings is intended
  TRAIN_ARGS=(--arch "${ARCH[$model]}" --model_dir "$model_dir" $(_data_args) ${AUGMENT_ARGS[$model]})
  if smoke; then
    # Same model, augmentation and loop; CPU-sized everything. fp32 and no XLA: AMP and XLA target GPUs.
    TRAIN_ARGS+=(--train_img_size 32 --eval_img_size 32 --train_batch_size 8 --eval_batch_size 32
                 --precision fp32 --seed 0)
    case $job in
      convergence) TRAIN_ARGS+=(--mode train_and_eval --max_epochs 1 --steps_per_epoch 2 --warmup_epochs 0
                                --save_checkpoint_freq 1 --log_steps 1) ;;
      benchmark) TRAIN_ARGS+=(--mode training_benchmark --benchmark_precisions fp32 --benchmark_batch_sizes 8
                              --benchmark_steps 2 --benchmark_warmup_steps 1) ;;
      *) die "unknown training job '$job' (convergence or benchmark)" ;;
    esac
    return
  fi
  TRAIN_ARGS+=(--train_img_size "$size" --eval_img_size "$size" --train_batch_size "$batch"
               --eval_batch_size "$batch" --precision "$precision")
  [ "${XLA:-1}" = 1 ] && TRAIN_ARGS+=(--use_xla)
  case $job in
    convergence) TRAIN_ARGS+=(--mode train_and_eval "${COMMON_TRAIN_ARGS[@]}") ;;
    # Throughput at the recipe's batch and precision only (the benchmark mode's default sweeps precisions).
    benchmark) TRAIN_ARGS+=(--mode training_benchmark "${COMMON_TRAIN_ARGS[@]}" --benchmark_precisions "$precision"
                            --benchmark_batch_sizes "$batch" --benchmark_steps 200 --benchmark_warmup_steps 50) ;;
    *) die "unknown training job '$job' (convergence or benchmark)" ;;
  esac
}

python_bin() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$REPO_ROOT/.venv/bin/python" ]; then echo "$REPO_ROOT/.venv/bin/python"
  else echo python3; fi
}

# Runs an entry point of the repo on NUM_GPUS GPUs of this node (one process in smoke mode).
_launch() {  # script.py args...
  local py cmd
  py=$(python_bin)
  local ngpus=${NUM_GPUS:-8}
  [[ $ngpus =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS must be a positive integer, got '$ngpus'"
  if smoke; then
    cmd=("$py" "$@")
  elif [ "${ENGINE:-tf_distribute}" = horovod ]; then
    # One process per GPU; the training code detects horovodrun and uses the Horovod engine.
    cmd=("$(dirname "$py")/horovodrun" -np "$ngpus" -H "localhost:$ngpus" --gloo "$py" "$@")
    [ -x "${cmd[0]}" ] || cmd[0]=horovodrun
  elif [ "${ENGINE:-tf_distribute}" = tf_distribute ]; then
    # One process: MirroredStrategy over every visible GPU, so NUM_GPUS picks the first N unless the caller
    # already chose devices.
    if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
      CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((ngpus - 1)))
      export CUDA_VISIBLE_DEVICES
    fi
    cmd=("$py" "$@")
  else
    die "ENGINE must be tf_distribute or horovod, got '${ENGINE}'"
  fi
  echo "+ ${CUDA_VISIBLE_DEVICES:+CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES }${cmd[*]}" >&2
  [ "${DRY_RUN:-0}" = 1 ] && return 0
  local rc=0
  (cd "$REPO_ROOT" && "${cmd[@]}") || rc=$?
  if [ "$rc" = "$PREEMPTED_EXIT_CODE" ]; then
    echo "recipes: run preempted (exit $rc): the checkpoint in the model dir is current; rerun this recipe to resume" >&2
  fi
  return "$rc"
}

_smoke_images() {
  # A few demo digits as JPEG files, so the inference recipes have an image folder to classify on CPU.
  local dir=$1
  [ -e "$dir" ] && return 0
  [ "${DRY_RUN:-0}" = 1 ] && return 0
  # Written beside and renamed into place, so a recipe running concurrently never sees half the files.
  mkdir -p "$(dirname "$dir")"
  local tmp
  tmp=$(mktemp -d "$dir.XXXXXX")
  "$(python_bin)" - "$tmp" "$REPO_ROOT" <<'EOF'
import os, sys
sys.path.insert(0, sys.argv[2])
from PIL import Image
from input.demo import load_digits
images, labels = load_digits()
for i in range(6):
    img = Image.fromarray((images[i] * 255 / 16).astype("uint8")).resize((32, 32)).convert("RGB")
    img.save(os.path.join(sys.argv[1], f"digit_{i}_label_{labels[i]}.jpg"), quality=95)
EOF
  chmod 755 "$tmp"
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"   # another recipe won the race: use its images
}

# recipe_main train MODEL PRECISION GPU convergence|benchmark [extra flags]
# recipe_main eval  MODEL PRECISION GPU [extra flags]
# recipe_main infer MODEL PRECISION [extra flags]
recipe_main() {
  local kind=$1; shift
  case $kind in
    train)
      local model=$1 prec=$2 gpu=$3 job=$4; shift 4
      _check "$model" "$prec" "$gpu"
      local model_dir=${MODEL_DIR:-$(default_model_dir "$model" "$prec" "$gpu")}
      if [ "$job" = benchmark ] && [ -z "${MODEL_DIR:-}" ]; then
        # Benchmarks never share the convergence run's dir: their JSON lands in a dir of their own.
        model_dir=${OUTPUT_DIR:-$REPO_ROOT/output}/$(smoke && echo smoke/ || true)$model/train_benchmark_${prec}_8x$gpu
      fi
      recipe_train_args "$model" "$prec" "$gpu" "$job" "$model_dir"
      _launch train.py "${TRAIN_ARGS[@]}" "$@"
      ;;
    eval)
      local model=$1 prec=$2 gpu=$3; shift 3
      _check "$model" "$prec" "$gpu"
      local model_dir=${MODEL_DIR:-$(default_model_dir "$model" "$prec" "$gpu")}
      local args=(--ckpt "$model_dir" --weights both --output "$model_dir/evaluation_${prec}_8x$gpu.json")
      # shellcheck disable=SC2207
      args+=($(_data_args))
      if smoke; then
        args+=(--eval_batch_size 32 --precision fp32)
      else
        # Evaluation runs on one process; a GPU evaluates the whole validation set in minutes.
        args+=(--eval_batch_size "${BATCH_PER_GPU[$model,$gpu]}" --precision "${PRECISION_FLAG[$prec]}")
      fi
      NUM_GPUS=1 ENGINE=tf_distribute _launch evaluate.py "${args[@]}" "$@"
      ;;
    infer)
      local model=$1 prec=$2; shift 2
      _check "$model" "$prec"
      # Defaults to the A100 convergence run of the same precision.
      local model_dir=${MODEL_DIR:-$(default_model_dir "$model" "$prec" A100-80G)}
      local images=${INFER_DIR:-/infer_data/images}
      if smoke; then
        images=${INFER_DIR:-${OUTPUT_DIR:-$REPO_ROOT/output}/smoke/infer_images}
        _smoke_images "$images"
      fi
      local args=(--ckpt "$model_dir" --image_dir "$images" --top_k 5 --output "$model_dir/predictions_${prec}.jsonl")
      smoke && args+=(--precision fp32) || args+=(--precision "${PRECISION_FLAG[$prec]}")
      NUM_GPUS=1 ENGINE=tf_distribute _launch predict.py "${args[@]}" "$@"
      ;;
    *) die "recipe_main: unknown kind '$kind' (train, eval or infer)" ;;
  esac
}
