"""The configs of train.py and evaluate.py: every setting declared once (flags.settings), with its flag name
(the reference's), default, help and rule. Plain Python: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from efficientnet import canonical_variant, decode_blocks, params_for, parse_overrides
from flags.settings import (NON_NEGATIVE, POSITIVE, Rule, Settings, each_of, group, notice, require, required,
                            setting, within)
from input.config import AugmentConfig, DataConfig, EvalPreprocessing, Preprocessing

MODES = ("train_and_eval", "train", "eval", "training_benchmark", "inference_benchmark")
BENCHMARK_MODES = ("training_benchmark", "inference_benchmark")
PRECISIONS = ("fp32", "tf32", "amp_fp16", "amp_bf16")
OPTIMIZERS = ("rmsprop", "sgd", "adamw")
LR_DECAYS = ("cosine", "exponential")
EVAL_WEIGHTS = ("raw", "ema", "both")
ENGINES = ("auto", "tf_distribute", "horovod")
# Runtimes a served network runs in (loops.serving.runtimes); all but tf need requirements-export.txt.
SERVING_BACKENDS = ("tf", "onnxruntime", "tflite")
INIT_WEIGHTS = ("ema", "raw")
TRAINABLE_FROM_HEAD = ("top", "predictions")  # besides block and stage names


def _per_channel_pair(values) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean,std (one value each, all channels) or 3 means then 3 stds -> ((3 means), (3 stds))."""
    floats = [float(v) for v in values]
    if len(floats) == 2:
        return (floats[0],) * 3, (floats[1],) * 3
    if len(floats) == 6:
        return tuple(floats[:3]), tuple(floats[3:])
    raise ValueError("expected mean,std or R,G,B means then R,G,B stds (pixels)")


def _valid_regexes(patterns) -> bool:
    try:
        for pattern in patterns:
            re.compile(pattern)
    except re.error:
        return False
    return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrecisionSettings(Settings):
    """--precision, or the reference's --use_amp; after validation `precision` is always one of PRECISIONS."""

    precision: str | None = setting(None, "Numeric precision (default fp32, or amp_fp16 with --use_amp).",
                                    choices=PRECISIONS)
    use_amp: bool = setting(False, "Mixed precision float16 with dynamic loss scaling (= --precision amp_fp16).")

    def validate(self):
        super().validate()
        require(not self.use_amp or self.precision in (None, "amp_fp16", "amp_bf16"), "use_amp", self.use_amp,
                f"contradicts --precision={self.precision}; pass one of them")
        if self.precision is None:
            self._resolve("precision", "amp_fp16" if self.use_amp else "fp32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointSettings(Settings):
    ckpt: str | None = setting(None, "Checkpoint prefix (model_dir/ckpt-N) or a model_dir written by train.py "
                                     "(then its latest checkpoint).")

    def validate(self):
        super().validate()
        self.require_checkpoint()

    def require_checkpoint(self):
        """A checkpoint is what every user of these settings runs; predict.py may take an export instead."""
        required(self.ckpt, "ckpt", "a checkpoint prefix or a model_dir")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkSettings(Settings):
    """train.py --mode training_benchmark / inference_benchmark (loops.bench.benchmark)."""

    batch_sizes: tuple[int, ...] = setting(
        (), "Batch sizes per replica to benchmark (default: inference 1,8,32; training --train_batch_size).",
        flag="benchmark_batch_sizes", parse=lambda items: tuple(int(b) for b in items),
        rule=Rule(lambda sizes: all(b > 0 for b in sizes), "need positive batch sizes"))
    precisions: tuple[str, ...] = setting(
        (), "Precisions to benchmark (default: fp32, amp_fp16, amp_bf16, and tf32 on GPU).",
        flag="benchmark_precisions", parse=tuple,
        rule=each_of(PRECISIONS))
    backends: tuple[str, ...] = setting(
        ("tf",), "Inference benchmark: runtimes to time side by side, tf, onnxruntime and/or tflite (the others "
                 "run the ONNX / TFLite fp32 export of the same network, in fp32 only).",
        flag="benchmark_backends", parse=tuple,
        rule=each_of(SERVING_BACKENDS))
    steps: int = setting(20, "Timed steps per batch size and precision.", flag="benchmark_steps", rule=POSITIVE)
    warmup_steps: int = setting(5, "Untimed steps before them (tracing, autotuning).", flag="benchmark_warmup_steps",
                                rule=NON_NEGATIVE)
    output: str | None = setting(None, "Results JSON (default: <model_dir>/<mode>.json).", flag="benchmark_output")
    profile_dir: str | None = setting(None, "If set, trace --benchmark_steps more steps per run with the "
                                            "TensorFlow profiler into this directory and print where the op time "
                                            "went.", flag="benchmark_profile_dir")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(PrecisionSettings):
    """Everything a train.py run is described by."""

    model_dir: str = setting("/tmp/efficientnet", "Checkpoints, logs and summaries; a run resumes from the "
                                                  "latest checkpoint here.")
    data: DataConfig = group(DataConfig)
    preprocess: Preprocessing = group(Preprocessing)
    augment: AugmentConfig = group(AugmentConfig)
    mode: str = setting("train_and_eval", "What to run.", choices=MODES)
    # model
    variant: str = setting("efficientnet-b0", "Model variant: efficientnet-b0 .. efficientnet-b7 (or b0..b7).",
                           flag="arch")
    num_classes: int | None = setting(None, "Classifier width (default: the dataset's class count).",
                                      rule=POSITIVE)
    model_overrides: dict[str, Any] = setting(
        {}, "Model overrides key=value[,key=value], e.g. dropout_rate=0.3,bn_momentum=0.9.", flag="mparams",
        parse=parse_overrides)
    use_xla: bool = setting(False, "Compile the forward/backward pass with XLA.")
    # batches and images; batch sizes are per replica, as in the reference
    train_batch_size: int = setting(32, "Training batch size per replica (per micro-batch).", rule=POSITIVE)
    eval_batch_size: int = setting(32, "Evaluation batch size per replica.", rule=POSITIVE)
    train_img_size: int = setting(224, "Training image size (of the last stage).", rule=POSITIVE)
    eval_img_size: int = setting(224, "Evaluation image size.", rule=POSITIVE)
    base_img_size: int = setting(128, "Training image size of the first stage.", rule=POSITIVE)
    n_stages: int = setting(1, "Stages of progressive resizing.", rule=POSITIVE)
    base_raug_magnitude: float = setting(5.0, "RandAugment magnitude of the first stage.", rule=within(0, 30))
    base_mixup_alpha: float = setting(0.0, "Mixup alpha of the first stage.", rule=NON_NEGATIVE)
    base_cutmix_alpha: float = setting(0.0, "CutMix alpha of the first stage.", rule=NON_NEGATIVE)
    grad_accum_steps: int = setting(1, "Micro-batches averaged into each optimizer update.", rule=POSITIVE)
    # schedule
    max_epochs: int = setting(500, "Training epochs.", rule=POSITIVE)
    steps_per_epoch: int | None = setting(None, "Steps per epoch (default: train examples // global batch).",
                                          rule=POSITIVE)
    warmup_epochs: float = setting(5.0, "Epochs of linear learning-rate warmup from 0 (at most --max_epochs: a "
                                        "longer warmup is cut to the run's length).", rule=NON_NEGATIVE)
    lr_init: float = setting(0.005, "Learning rate for a global batch of 128; scaled linearly.", rule=POSITIVE)
    lr_decay: str = setting("cosine", "Decay after warmup.", choices=LR_DECAYS)
    lr_decay_rate: float = setting(0.97, "Exponential decay factor.", rule=within(0, 1, low_open=True))
    lr_decay_epochs: float = setting(2.4, "Epochs between exponential decays.", rule=POSITIVE)
    # optimizer and loss
    optimizer: str = setting("rmsprop", "Optimizer.", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "Momentum of RMSprop and SGD.")
    rho: float = setting(0.9, "RMSprop decay of the squared-gradient average.")
    epsilon: float = setting(1e-3, "Optimizer epsilon (inside the square root for RMSprop).", flag="opt_epsilon")
    beta_1: float = setting(0.9, "AdamW beta_1.")
    beta_2: float = setting(0.999, "AdamW beta_2.")
    weight_decay: float = setting(5e-6, "L2 coefficient on conv and dense weights (none on BatchNorm); AdamW: "
                                        "decoupled decay.", rule=NON_NEGATIVE)
    label_smoothing: float = setting(0.1, "Label smoothing of the training loss.", rule=within(0, 1, high_open=True))
    moving_average_decay: float = setting(0.9999, "EMA decay of the shadow weights; 0 disables EMA.",
                                          rule=within(0, 1, high_open=True))
    # evaluation, checkpoints, logs
    eval_weights: str = setting("both", "Weights evaluated during training.", choices=EVAL_WEIGHTS)
    epochs_between_evals: int = setting(1, "Evaluate every N epochs in train_and_eval.", rule=POSITIVE)
    save_checkpoint_freq: int = setting(10, "Save a checkpoint every N epochs (and at the end).", rule=POSITIVE)
    save_checkpoint_steps: int | None = setting(None, "Also save a checkpoint every N steps (long epochs).",
                                                rule=POSITIVE)
    max_bad_steps: int = setting(20, "Stop after this many consecutive steps with a non-finite loss.",
                                 rule=POSITIVE)
    keep_checkpoints: int = setting(3, "Checkpoints kept in --model_dir.", rule=POSITIVE)
    keep_best_checkpoints: int = setting(
        0, "Also keep the N checkpoints with the best evaluation top-1 (raw or EMA weights, whichever scored "
           "higher) as best-<step> in --model_dir, listed in best_checkpoints.json and summary.json "
           "(--mode train_and_eval; average them with `python -m loops.average_checkpoints`).", rule=NON_NEGATIVE)
    log_steps: int = setting(100, "Steps between logged training metrics (the host reads them only then).",
                             rule=POSITIVE)
    seed: int = setting(0, "Random seed of weights, data order and augmentation.")
    # parallel engine (loops.parallel.distribution.create_engine)
    engine: str = setting("auto", "Parallel engine: horovod (one process per device, started by horovodrun) or "
                                  "tf_distribute (one device, all local GPUs, or TF_CONFIG workers). auto: horovod "
                                  "when horovodrun's HOROVOD_RANK/HOROVOD_SIZE are set.", choices=ENGINES)
    hvd_fp16_allreduce: bool = setting(False, "Horovod: send gradients as float16 in the allreduce.")
    collective_timeout_s: float | None = setting(
        None, "Seconds a cross-worker collective may wait before failing (TF_CONFIG workers: "
              "CommunicationOptions timeout; Horovod: HOROVOD_GLOO_TIMEOUT_SECONDS for a frozen rank, and for a "
              "stalled one the stall inspector's warning at half of it and shutdown at it, which ends the run 1.5-2.5 "
              "timeouts into the stall). Keep it above the workers' largest skew (tracing the first step, the "
              "chief's checkpoint writes). Default: no bound for TF_CONFIG; for Horovod Gloo's 30 s and a stall "
              "warning every 60 s without shutdown.", rule=POSITIVE)
    benchmark: BenchmarkSettings = group(BenchmarkSettings)
    # warm start (loops.warm_start) and fine-tuning (loops.freezing)
    init_checkpoint: str | None = setting(
        None, "Start a fresh run from these weights (weights only: optimizer, step and schedule start anew; EMA "
              "starts from them): one of our checkpoints (model_dir or ckpt-N prefix), a Keras Applications "
              "EfficientNet .h5 or .weights.h5 (with or without top), a tensorflow/tpu checkpoint, or timm "
              "tf_efficientnet safetensors, told apart by content (docs/pretrained.md). Ignored, with a message, "
              "when --model_dir holds a checkpoint to resume.")
    init_checkpoint_weights: str = setting("ema", "Which weights of an --init_checkpoint that holds both: the "
                                                  "exponential moving average or the raw trained ones.",
                                           choices=INIT_WEIGHTS)
    init_checkpoint_replace_head: bool = setting(
        False, "Start a fresh classifier when --init_checkpoint's has another class count than this run (or none: "
               "a notop file) instead of stopping with an error.")
    init_checkpoint_exclude: tuple[str, ...] = setting(
        (), "Variables not loaded from --init_checkpoint (left at their initialisation): regular expressions "
            "matched at the start of variable paths, e.g. predictions (a fresh classifier even for the same "
            "class count), top_, block7.", parse=tuple,
        rule=Rule(_valid_regexes, "each must be a regular expression"))
    init_checkpoint_normalization: tuple[float, ...] = setting(
        (), "The input normalisation mean,std (pixels; one value each or R,G,B,R,G,B) the --init_checkpoint "
            "network was trained with, for files that do not record it (tensorflow/tpu checkpoints; default "
            "ImageNet's), e.g. 127.5,127.5 for AdvProp (with --mparams input_mean=127.5,input_std=127.5).",
        parse=lambda items: tuple(float(v) for v in items),
        rule=Rule(lambda v: not v or (len(v) in (2, 6) and min(v[len(v) // 2:]) > 0),
                  "expected mean,std or R,G,B means then R,G,B stds, stds positive"))
    trainable_from: str | None = setting(
        None, "Train only from this layer on: a block (block6a), a stage (block6 = its first block), top (the "
              "head convolution and the classifier) or predictions (the classifier alone). Everything before it "
              "is frozen: excluded from the optimizer, L2 and the EMA update, and run in inference mode "
              "(BatchNorm with its moving statistics, no stochastic depth). Default: everything trains.")
    freeze_backbone: bool = setting(False, "Train the classifier alone (= --trainable_from predictions).")
    freeze_batch_norm: bool = setting(False, "Freeze every BatchNorm layer (inference mode: moving statistics used "
                                             "and kept; scale and offset fixed), also in the layers that train.")

    def validate(self):
        super().validate()
        try:
            self._resolve("variant", canonical_variant(self.variant))
        except ValueError as e:
            require(False, "arch", self.variant, str(e))
        require("num_classes" not in self.model_overrides, "mparams", self.model_overrides,
                "set the class count with --num_classes, not --mparams num_classes=...")
        try:
            params = params_for(self.variant, **self.model_overrides)  # checked now, not after data loading
        except ValueError as e:
            require(False, "mparams", self.model_overrides, str(e))
        self._validate_fine_tuning(params)
        if self.warmup_epochs > self.max_epochs:
            # A short run (--max_epochs 3) with the reference's 5 warmup epochs is what a user tries first;
            # it should run, warming up over the whole run, and say so.
            notice("warmup_epochs", self.warmup_epochs, f"is longer than --max_epochs={self.max_epochs}; warming "
                   f"up over all {self.max_epochs} epochs instead (the learning rate peaks at the end)")
            self._resolve("warmup_epochs", float(self.max_epochs))
        require(self.n_stages <= self.max_epochs, "n_stages", self.n_stages,
                f"cannot exceed --max_epochs={self.max_epochs} (every stage needs an epoch)")
        require(self.n_stages == 1 or self.base_img_size <= self.train_img_size, "base_img_size",
                self.base_img_size, f"must not exceed --train_img_size={self.train_img_size}")
        require(not self.hvd_fp16_allreduce or self.engine != "tf_distribute", "hvd_fp16_allreduce",
                self.hvd_fp16_allreduce, "only applies to --engine horovod, not --engine tf_distribute")
        require(self.eval_weights == "raw" or self.moving_average_decay > 0, "eval_weights", self.eval_weights,
                "needs EMA weights, but --moving_average_decay=0 disables them")
        require(self.mode == "inference_benchmark" or self.benchmark.backends == ("tf",), "benchmark_backends",
                ",".join(self.benchmark.backends), "only applies to --mode inference_benchmark")
        require(not self.keep_best_checkpoints or self.mode == "train_and_eval", "keep_best_checkpoints",
                self.keep_best_checkpoints, f"needs evaluations: --mode train_and_eval, not {self.mode}")

    def _validate_fine_tuning(self, params):
        for name in ("init_checkpoint_replace_head", "init_checkpoint_exclude", "init_checkpoint_normalization"):
            require(not getattr(self, name) or self.init_checkpoint, name, getattr(self, name),
                    "needs --init_checkpoint")
        require(self.init_checkpoint_weights == "ema" or self.init_checkpoint, "init_checkpoint_weights",
                self.init_checkpoint_weights, "needs --init_checkpoint")
        for name in ("init_checkpoint", "trainable_from", "freeze_backbone", "freeze_batch_norm"):
            require(self.mode not in BENCHMARK_MODES or not getattr(self, name), name, getattr(self, name),
                    f"does not apply to --mode {self.mode} (benchmarks time the full network from random weights)")
        if self.freeze_backbone:
            require(self.trainable_from in (None, "predictions"), "freeze_backbone", self.freeze_backbone,
                    f"contradicts --trainable_from={self.trainable_from}; pass one of them")
            self._resolve("trainable_from", "predictions")
        if self.trainable_from is not None:
            blocks = [spec.name for spec in decode_blocks(params)]
            stages = {name[:-1]: name for name in reversed(blocks)}  # block6 -> block6a, its first block
            resolved = stages.get(self.trainable_from, self.trainable_from)
            require(resolved in blocks or resolved in TRAINABLE_FROM_HEAD, "trainable_from", self.trainable_from,
                    f"not a block of efficientnet-{self.variant} ({blocks[0]} .. {blocks[-1]}), a stage (block1 .. "
                    f"{blocks[-1][:-1]}), top or predictions")
            self._resolve("trainable_from", resolved)

    @property
    def init_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """--init_checkpoint_normalization as (3 means, 3 stds), or None."""
        return _per_channel_pair(self.init_checkpoint_normalization) if self.init_checkpoint_normalization else None

    @property
    def use_ema(self) -> bool:
        return self.moving_average_decay > 0

    @property
    def weights_to_evaluate(self) -> tuple[str, ...]:
        return weights_to_evaluate(self.eval_weights)

    @property
    def benchmark_output(self) -> str:
        return self.benchmark.output or os.path.join(self.model_dir, f"{self.mode}.json")


def weights_to_evaluate(choice: str) -> tuple[str, ...]:
    """"both" -> ("raw", "ema"); "raw" or "ema" -> itself."""
    return ("raw", "ema") if choice == "both" else (choice,)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationSettings(Settings):
    """The evaluation set and how it is fed (evaluate.py, loops.average_checkpoints)."""

    data: DataConfig = group(DataConfig)
    preprocess: EvalPreprocessing = group(EvalPreprocessing)
    eval_batch_size: int = setting(32, "Evaluation batch size per replica.", rule=POSITIVE)
    eval_img_size: int | None = setting(None, "Evaluation image size (default: the run's, from run_spec.json).",
                                        rule=POSITIVE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(PrecisionSettings, CheckpointSettings, EvaluationSettings):
    """evaluate.py: a checkpoint's raw and/or EMA weights over an evaluation set."""

    weights: str = setting("both", "Which weights to evaluate: the raw trained ones, their exponential moving "
                                   "average, or both (reporting each and the better).", choices=EVAL_WEIGHTS)
    output: str | None = setting(None, "Where the results JSON goes (default: <model_dir>/eval-<ckpt-N>.json).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AverageConfig(PrecisionSettings, EvaluationSettings):
    """python -m loops.average_checkpoints: several checkpoints' weights averaged into one, then evaluated."""

    ckpts: tuple[str, ...] = setting(
        (), "Checkpoints to average: prefixes (model_dir/best-N, model_dir/ckpt-N), or a model_dir for the best "
            "checkpoints train.py kept there (--keep_best_checkpoints, best_checkpoints.json).", parse=tuple)
    weights: str | None = setting(None, "Which weights of each checkpoint to average (default: ema when every "
                                        "checkpoint holds EMA weights, else raw).", choices=("raw", "ema"))
    output: str | None = setting(None, "Directory of the averaged checkpoint, with its run_spec.json and "
                                       "evaluation (default: <model_dir of the first checkpoint>/averaged).")

    def validate(self):
        super().validate()
        required(self.ckpts, "ckpts", "checkpoint prefixes or a model_dir")
