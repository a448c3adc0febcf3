"""Flags of train.py's --mode training_benchmark / inference_benchmark (the model and training flags are
train.py's own)."""

from __future__ import annotations

from absl import flags

from loops.benchmark import DEFAULT_INFERENCE_BATCH_SIZES, BenchmarkConfig, default_precisions
from loops.config import TrainConfig

FLAGS = flags.FLAGS


def define_benchmark_flags():
    flags.DEFINE_list("benchmark_batch_sizes", [], "Batch sizes per replica to benchmark (default: "
                      "inference 1,8,32; training --train_batch_size).")
    flags.DEFINE_list("benchmark_precisions", [], "Precisions to benchmark (default: fp32, amp_fp16, amp_bf16, "
                      "and tf32 on GPU).")
    flags.DEFINE_integer("benchmark_steps", 20, "Timed steps per batch size and precision.")
    flags.DEFINE_integer("benchmark_warmup_steps", 5, "Untimed steps before them (tracing, autotuning).")
    flags.DEFINE_string("benchmark_output", None, "Results JSON (default: <model_dir>/<mode>.json).")
    flags.DEFINE_string("benchmark_profile_dir", None, "If set, trace --benchmark_steps more steps per run with "
                        "the TensorFlow profiler into this directory and print where the op time went.")


def benchmark_config_from_flags(train: TrainConfig) -> BenchmarkConfig:
    """Raises ValueError naming the flag at fault."""
    try:
        sizes = tuple(int(b) for b in FLAGS.benchmark_batch_sizes)
    except ValueError:
        raise ValueError(f"--benchmark_batch_sizes={','.join(FLAGS.benchmark_batch_sizes)}: must be integers") \
            from None
    if not sizes:
        sizes = (train.train_batch_size,) if train.mode == "training_benchmark" else DEFAULT_INFERENCE_BATCH_SIZES
    if FLAGS.benchmark_precisions:
        precisions = tuple(FLAGS.benchmark_precisions)
    else:
        import tensorflow as tf

        precisions = default_precisions(bool(tf.config.list_physical_devices("GPU")))
    if FLAGS.benchmark_profile_dir:
        import tensorflow as tf

        # Checked now: the profiler would only fail after the timed runs, losing their table.
        try:
            tf.io.gfile.makedirs(FLAGS.benchmark_profile_dir)
        except (tf.errors.OpError, OSError) as e:
            raise ValueError(f"--benchmark_profile_dir={FLAGS.benchmark_profile_dir}: cannot create it ({e})") \
                from None
    image_size = train.train_img_size if train.mode == "training_benchmark" else train.eval_img_size
    return BenchmarkConfig(train=train, mode=train.mode, batch_sizes=sizes, precisions=precisions,
                           image_size=image_size, steps=FLAGS.benchmark_steps,
                           warmup_steps=FLAGS.benchmark_warmup_steps, output=FLAGS.benchmark_output,
                           profile_dir=FLAGS.benchmark_profile_dir)
