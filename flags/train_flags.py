"""Flags of train.py, named as in NVIDIA's EfficientNet TF2 so existing launch scripts carry over."""

from __future__ import annotations

from absl import flags

import efficientnet
from input.config import AugmentConfig, DataConfig
from loops.config import ENGINES, LR_DECAYS, MODES, OPTIMIZERS, PRECISIONS, TrainConfig

FLAGS = flags.FLAGS


def define_data_flags():
    flags.DEFINE_string("data_dir", None, "Dataset directory: TFRecord shards (train-*, validation-*), a TFDS "
                        "data_dir, or an image folder (train/<class>/*, validation/<class>/*). Empty: the "
                        "embedded demo dataset (scikit-learn digits).")
    flags.DEFINE_enum("data_source", "auto", ["auto", "tfrecord", "tfds", "folder"],
                      "What --data_dir holds; auto detects it.")
    flags.DEFINE_string("dataset", None, "TFDS dataset name (e.g. imagenet2012) when --data_source=tfds.")
    flags.DEFINE_string("manual_dir", None, "TFDS manual_dir with the ImageNet tars, for offline preparation.")
    flags.DEFINE_boolean("labels_zero_based", False, "TFRecord labels are already 0-based (ImageNet's are 1-based).")
    flags.DEFINE_boolean("skip_corrupt", False, "Skip and count undecodable images instead of stopping.")
    flags.DEFINE_enum("resize_method", "bilinear", ["bilinear", "bicubic"], "Image resize interpolation.")
    flags.DEFINE_string("demo_cache_dir", None, "Where the demo dataset's TFRecords are cached.")
    flags.DEFINE_integer("eval_img_size", 224, "Evaluation image size.")
    flags.DEFINE_integer("eval_batch_size", 32, "Evaluation batch size per replica.")


def define_model_flags():
    flags.DEFINE_string("arch", "efficientnet-b0", "Model variant: efficientnet-b0 .. efficientnet-b7 (or b0..b7).")
    flags.DEFINE_list("mparams", [], "Model overrides key=value[,key=value], e.g. dropout_rate=0.3,bn_momentum=0.9.")
    flags.DEFINE_integer("num_classes", None, "Classifier width (default: the dataset's class count).")


def define_train_flags():
    define_data_flags()
    define_model_flags()
    flags.DEFINE_enum("mode", "train_and_eval", list(MODES), "What to run.")
    flags.DEFINE_string("model_dir", "/tmp/efficientnet", "Checkpoints, logs and summaries; a run resumes from "
                        "the latest checkpoint here.")
    flags.DEFINE_enum("precision", None, list(PRECISIONS), "Numeric precision (default fp32, or amp_fp16 "
                      "with --use_amp).")
    flags.DEFINE_boolean("use_amp", False, "Mixed precision float16 with dynamic loss scaling (= --precision amp_fp16).")
    flags.DEFINE_boolean("use_xla", False, "Compile the forward/backward pass with XLA.")
    flags.DEFINE_integer("train_batch_size", 32, "Training batch size per replica (per micro-batch).")
    flags.DEFINE_integer("train_img_size", 224, "Training image size (of the last stage).")
    flags.DEFINE_integer("base_img_size", 128, "Training image size of the first stage.")
    flags.DEFINE_integer("n_stages", 1, "Stages of progressive resizing.")
    flags.DEFINE_integer("grad_accum_steps", 1, "Micro-batches averaged into each optimizer update.")
    flags.DEFINE_integer("max_epochs", 500, "Training epochs.")
    flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: train examples // global batch).")
    flags.DEFINE_float("warmup_epochs", 5, "Epochs of linear learning-rate warmup from 0.")
    flags.DEFINE_float("lr_init", 0.005, "Learning rate for a global batch of 128; scaled linearly.")
    flags.DEFINE_enum("lr_decay", "cosine", list(LR_DECAYS), "Decay after warmup.")
    flags.DEFINE_float("lr_decay_rate", 0.97, "Exponential decay factor.")
    flags.DEFINE_float("lr_decay_epochs", 2.4, "Epochs between exponential decays.")
    flags.DEFINE_enum("optimizer", "rmsprop", list(OPTIMIZERS), "Optimizer.")
    flags.DEFINE_float("momentum", 0.9, "Momentum of RMSprop and SGD.")
    flags.DEFINE_float("rho", 0.9, "RMSprop decay of the squared-gradient average.")
    flags.DEFINE_float("opt_epsilon", 1e-3, "Optimizer epsilon (inside the square root for RMSprop).")
    flags.DEFINE_float("beta_1", 0.9, "AdamW beta_1.")
    flags.DEFINE_float("beta_2", 0.999, "AdamW beta_2.")
    flags.DEFINE_float("weight_decay", 5e-6, "L2 coefficient on conv and dense weights (none on BatchNorm); "
                       "AdamW: decoupled decay.")
    flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of the training loss.")
    flags.DEFINE_float("moving_average_decay", 0.9999, "EMA decay of the shadow weights; 0 disables EMA.")
    flags.DEFINE_enum("eval_weights", "both", ["raw", "ema", "both"], "Weights evaluated during training.")
    flags.DEFINE_integer("epochs_between_evals", 1, "Evaluate every N epochs in train_and_eval.")
    flags.DEFINE_integer("save_checkpoint_freq", 10, "Save a checkpoint every N epochs (and at the end).")
    flags.DEFINE_integer("save_checkpoint_steps", None, "Also save a checkpoint every N steps (long epochs).")
    flags.DEFINE_integer("max_bad_steps", 20, "Stop after this many consecutive steps with a non-finite loss.")
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in --model_dir.")
    flags.DEFINE_integer("log_steps", 100, "Steps between logged training metrics.")
    flags.DEFINE_integer("seed", 0, "Random seed of weights, data order and augmentation.")
    flags.DEFINE_enum("augmenter_name", None, ["autoaugment", "randaugment"], "Image augmentation policy.")
    flags.DEFINE_integer("raug_num_layers", 2, "RandAugment: operations per image.")
    flags.DEFINE_float("raug_magnitude", 10, "RandAugment magnitude (of the last stage).")
    flags.DEFINE_float("base_raug_magnitude", 5, "RandAugment magnitude of the first stage.")
    flags.DEFINE_float("mixup_alpha", 0.0, "Mixup alpha (of the last stage); 0 disables.")
    flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix alpha (of the last stage); 0 disables.")
    flags.DEFINE_float("base_mixup_alpha", 0.0, "Mixup alpha of the first stage.")
    flags.DEFINE_float("base_cutmix_alpha", 0.0, "CutMix alpha of the first stage.")
    flags.DEFINE_boolean("defer_img_mixing", False, "Mix images in the train step instead of the input pipeline.")
    flags.DEFINE_enum("engine", "auto", list(ENGINES), "Parallel engine: horovod (one process per device, "
                      "started by horovodrun) or tf_distribute (one device, all local GPUs, or TF_CONFIG "
                      "workers). auto: horovod when horovodrun's HOROVOD_RANK/HOROVOD_SIZE are set.")
    flags.DEFINE_boolean("hvd_fp16_allreduce", False, "Horovod: send gradients as float16 in the allreduce.")
    flags.DEFINE_float("collective_timeout_s", None, "Seconds a cross-worker collective may wait before failing "
                       "(TF_CONFIG workers: CommunicationOptions timeout; Horovod: HOROVOD_GLOO_TIMEOUT_SECONDS). "
                       "Default: no bound for TF_CONFIG, Gloo's 30 s for Horovod.")


def data_config_from_flags() -> DataConfig:
    return DataConfig(data_dir=FLAGS.data_dir or None, source=FLAGS.data_source, dataset=FLAGS.dataset,
                      manual_dir=FLAGS.manual_dir, labels_zero_based=FLAGS.labels_zero_based,
                      skip_corrupt=FLAGS.skip_corrupt, resize_method=FLAGS.resize_method,
                      demo_cache_dir=FLAGS.demo_cache_dir)


def precision_from_flags() -> str:
    if FLAGS.use_amp and FLAGS.precision not in (None, "amp_fp16", "amp_bf16"):
        raise ValueError(f"--use_amp contradicts --precision={FLAGS.precision}; pass one of them")
    return FLAGS.precision or ("amp_fp16" if FLAGS.use_amp else "fp32")


def train_config_from_flags() -> TrainConfig:
    """The one place flags are read; raises ValueError naming the flag at fault."""
    if FLAGS.defer_img_mixing and not (FLAGS.mixup_alpha or FLAGS.cutmix_alpha):
        raise ValueError("--defer_img_mixing needs --mixup_alpha or --cutmix_alpha > 0")
    overrides = efficientnet.parse_overrides(FLAGS.mparams)
    if "num_classes" in overrides:
        raise ValueError("set the class count with --num_classes, not --mparams num_classes=...")
    variant = efficientnet.canonical_variant(FLAGS.arch)
    efficientnet.params_for(variant, **overrides)  # validates override values now, not after data loading
    augment = AugmentConfig(augmenter_name=FLAGS.augmenter_name, raug_num_layers=FLAGS.raug_num_layers,
                            raug_magnitude=FLAGS.raug_magnitude, mixup_alpha=FLAGS.mixup_alpha,
                            cutmix_alpha=FLAGS.cutmix_alpha, defer_img_mixing=FLAGS.defer_img_mixing)
    return TrainConfig(
        model_dir=FLAGS.model_dir, data=data_config_from_flags(), augment=augment, mode=FLAGS.mode,
        variant=variant, num_classes=FLAGS.num_classes, model_overrides=overrides,
        precision=precision_from_flags(), use_xla=FLAGS.use_xla,
        train_batch_size=FLAGS.train_batch_size, eval_batch_size=FLAGS.eval_batch_size,
        train_img_size=FLAGS.train_img_size, eval_img_size=FLAGS.eval_img_size, base_img_size=FLAGS.base_img_size,
        n_stages=FLAGS.n_stages, base_raug_magnitude=FLAGS.base_raug_magnitude,
        base_mixup_alpha=FLAGS.base_mixup_alpha, base_cutmix_alpha=FLAGS.base_cutmix_alpha,
        grad_accum_steps=FLAGS.grad_accum_steps, max_epochs=FLAGS.max_epochs,
        steps_per_epoch=FLAGS.steps_per_epoch, warmup_epochs=FLAGS.warmup_epochs, lr_init=FLAGS.lr_init,
        lr_decay=FLAGS.lr_decay, lr_decay_rate=FLAGS.lr_decay_rate, lr_decay_epochs=FLAGS.lr_decay_epochs,
        optimizer=FLAGS.optimizer, momentum=FLAGS.momentum, rho=FLAGS.rho, epsilon=FLAGS.opt_epsilon,
        beta_1=FLAGS.beta_1, beta_2=FLAGS.beta_2, weight_decay=FLAGS.weight_decay,
        label_smoothing=FLAGS.label_smoothing, moving_average_decay=FLAGS.moving_average_decay,
        epochs_between_evals=FLAGS.epochs_between_evals, eval_weights=FLAGS.eval_weights,
        save_checkpoint_freq=FLAGS.save_checkpoint_freq, keep_checkpoints=FLAGS.keep_checkpoints,
        save_checkpoint_steps=FLAGS.save_checkpoint_steps, max_bad_steps=FLAGS.max_bad_steps,
        log_steps=FLAGS.log_steps, seed=FLAGS.seed,
        engine=FLAGS.engine, hvd_fp16_allreduce=FLAGS.hvd_fp16_allreduce,
        collective_timeout_s=FLAGS.collective_timeout_s,
    )
