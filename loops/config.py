"""The one configuration object a training run is described by; entry points build it from flags."""

from __future__ import annotations

import dataclasses
from typing import Any

from input.config import AugmentConfig, DataConfig

MODES = ("train_and_eval", "train", "eval", "training_benchmark", "inference_benchmark")
PRECISIONS = ("fp32", "tf32", "amp_fp16", "amp_bf16")
OPTIMIZERS = ("rmsprop", "sgd", "adamw")
LR_DECAYS = ("cosine", "exponential")
EVAL_WEIGHTS = ("raw", "ema", "both")
ENGINES = ("auto", "tf_distribute", "horovod")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    mode: str = "train_and_eval"
    # model
    variant: str = "b0"
    num_classes: int | None = None  # None: the dataset's class count
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    # precision and compilation
    precision: str = "fp32"
    use_xla: bool = False
    # batches and images; batch sizes are per replica, as in the reference
    train_batch_size: int = 32
    eval_batch_size: int = 32
    train_img_size: int = 224
    eval_img_size: int = 224
    base_img_size: int = 128
    n_stages: int = 1
    base_raug_magnitude: float = 5.0
    base_mixup_alpha: float = 0.0
    base_cutmix_alpha: float = 0.0
    grad_accum_steps: int = 1
    # schedule
    max_epochs: int = 500
    steps_per_epoch: int | None = None  # None: the dataset's examples // global batch
    warmup_epochs: float = 5.0
    lr_init: float = 0.005  # for a global batch of 128; scaled linearly
    lr_decay: str = "cosine"
    lr_decay_rate: float = 0.97
    lr_decay_epochs: float = 2.4
    # optimizer and loss
    optimizer: str = "rmsprop"
    momentum: float = 0.9
    rho: float = 0.9
    epsilon: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 5e-6
    label_smoothing: float = 0.1
    moving_average_decay: float = 0.9999  # 0 disables EMA
    # evaluation, checkpoints, logs
    epochs_between_evals: int = 1
    eval_weights: str = "both"
    save_checkpoint_freq: int = 10  # epochs
    save_checkpoint_steps: int | None = None  # also every N steps, for runs whose epochs are long
    max_bad_steps: int = 20  # consecutive non-finite losses that stop the run
    keep_checkpoints: int = 3
    log_steps: int = 100
    seed: int = 0
    # parallel engine (loops.distribution.create_engine)
    engine: str = "auto"  # auto: horovod under horovodrun, else tf.distribute
    hvd_fp16_allreduce: bool = False
    collective_timeout_s: float | None = None  # None: collectives wait for their peers without a bound

    def __post_init__(self):
        def need(ok: bool, flag: str, value: Any, rule: str):
            if not ok:
                raise ValueError(f"--{flag}={value!r}: {rule}")

        choices = [("mode", MODES), ("precision", PRECISIONS), ("optimizer", OPTIMIZERS),
                   ("lr_decay", LR_DECAYS), ("eval_weights", EVAL_WEIGHTS), ("engine", ENGINES)]
        for name, allowed in choices:
            need(getattr(self, name) in allowed, name, getattr(self, name), f"must be one of {', '.join(allowed)}")
        for name in ["train_batch_size", "eval_batch_size", "train_img_size", "eval_img_size", "base_img_size",
                     "n_stages", "grad_accum_steps", "max_epochs", "epochs_between_evals",
                     "save_checkpoint_freq", "keep_checkpoints", "log_steps"]:
            need(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        need(self.save_checkpoint_steps is None or self.save_checkpoint_steps > 0, "save_checkpoint_steps",
             self.save_checkpoint_steps, "must be positive")
        need(self.max_bad_steps > 0, "max_bad_steps", self.max_bad_steps, "must be positive")
        need(self.steps_per_epoch is None or self.steps_per_epoch > 0, "steps_per_epoch", self.steps_per_epoch,
             "must be positive")
        need(self.num_classes is None or self.num_classes > 0, "num_classes", self.num_classes, "must be positive")
        need(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be >= 0")
        need(self.warmup_epochs <= self.max_epochs, "warmup_epochs", self.warmup_epochs,
             f"cannot exceed --max_epochs={self.max_epochs}")
        need(self.lr_init > 0, "lr_init", self.lr_init, "must be positive")
        need(0 < self.lr_decay_rate <= 1, "lr_decay_rate", self.lr_decay_rate, "must be in (0, 1]")
        need(self.lr_decay_epochs > 0, "lr_decay_epochs", self.lr_decay_epochs, "must be positive")
        need(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        need(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "must be in [0, 1)")
        need(0 <= self.moving_average_decay < 1, "moving_average_decay", self.moving_average_decay,
             "must be in [0, 1)")
        need(self.n_stages <= self.max_epochs, "n_stages", self.n_stages,
             f"cannot exceed --max_epochs={self.max_epochs} (every stage needs an epoch)")
        need(self.n_stages == 1 or self.base_img_size <= self.train_img_size, "base_img_size",
             self.base_img_size, f"must not exceed --train_img_size={self.train_img_size}")
        need(self.collective_timeout_s is None or self.collective_timeout_s > 0, "collective_timeout_s",
             self.collective_timeout_s, "must be positive")
        need(not self.hvd_fp16_allreduce or self.engine != "tf_distribute", "hvd_fp16_allreduce",
             self.hvd_fp16_allreduce, "only applies to --engine horovod, not --engine tf_distribute")
        need(self.eval_weights == "raw" or self.moving_average_decay > 0, "eval_weights", self.eval_weights,
             "needs EMA weights, but --moving_average_decay=0 disables them")

    @property
    def use_ema(self) -> bool:
        return self.moving_average_decay > 0

    @property
    def weights_to_evaluate(self) -> tuple[str, ...]:
        return ("raw", "ema") if self.eval_weights == "both" else (self.eval_weights,)
