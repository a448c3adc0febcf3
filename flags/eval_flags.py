"""Flags of evaluate.py, plus the --ckpt and precision flags that predict.py and export.py share."""

from __future__ import annotations

from absl import flags

from flags import train_flags
from loops.config import PRECISIONS
from loops.offline_evaluation import EvalConfig
from loops.restore import WEIGHTS

FLAGS = flags.FLAGS


def define_ckpt_flag():
    flags.DEFINE_string("ckpt", None, "Checkpoint prefix (model_dir/ckpt-N) or a model_dir written by train.py "
                        "(then its latest checkpoint).")


def define_precision_flags():
    flags.DEFINE_enum("precision", None, list(PRECISIONS), "Numeric precision (default fp32, or amp_fp16 with "
                      "--use_amp).")
    flags.DEFINE_boolean("use_amp", False, "Mixed precision float16 (= --precision amp_fp16).")


def define_eval_flags():
    train_flags.define_data_flags()
    define_ckpt_flag()
    define_precision_flags()
    flags.DEFINE_enum("weights", "both", list(WEIGHTS), "Which weights to evaluate: the raw trained ones, their "
                      "exponential moving average, or both (reporting each and the better).")
    flags.DEFINE_string("output", None, "Where the results JSON goes (default: <model_dir>/eval-<ckpt-N>.json).")


def required(name: str) -> str:
    value = getattr(FLAGS, name)
    if not value:
        raise ValueError(f"--{name} is required")
    return value


def present(name: str) -> bool:
    """Whether the flag was given on the command line (so a run_spec.json value should not win)."""
    return FLAGS[name].present > 0


def eval_config_from_flags() -> EvalConfig:
    """The one place evaluate.py reads flags; raises ValueError naming the flag at fault."""
    return EvalConfig(
        ckpt=required("ckpt"), data=train_flags.data_config_from_flags(), weights=FLAGS.weights,
        eval_batch_size=FLAGS.eval_batch_size,
        eval_img_size=FLAGS.eval_img_size if present("eval_img_size") else None,
        resize_method=FLAGS.resize_method if present("resize_method") else None,
        precision=train_flags.precision_from_flags(), output=FLAGS.output)
