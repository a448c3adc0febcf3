"""Flags of export.py."""

from __future__ import annotations

from absl import flags

from flags import eval_flags
from loops.export import ExportConfig
from loops.prediction import PREDICT_WEIGHTS

FLAGS = flags.FLAGS


def define_export_flags():
    eval_flags.define_ckpt_flag()
    flags.DEFINE_string("output", None, "SavedModel directory to write.")
    flags.DEFINE_enum("weights", "ema", list(PREDICT_WEIGHTS), "Weights to export (EMA unless the checkpoint "
                      "has none).")
    flags.DEFINE_integer("top_k", 5, "Classes returned per image by the signatures.")
    flags.DEFINE_integer("img_size", None, "Input resolution (default: the run's --eval_img_size).")
    flags.DEFINE_enum("resize_method", None, ["bilinear", "bicubic"], "Resize interpolation (default: the run's).")
    flags.DEFINE_boolean("overwrite", False, "Replace a non-empty --output directory.")


def export_config_from_flags() -> ExportConfig:
    """The one place export.py reads flags; raises ValueError naming the flag at fault."""
    return ExportConfig(ckpt=eval_flags.required("ckpt"), output=eval_flags.required("output"),
                        weights=FLAGS.weights, top_k=FLAGS.top_k, img_size=FLAGS.img_size,
                        resize_method=FLAGS.resize_method, overwrite=FLAGS.overwrite)
