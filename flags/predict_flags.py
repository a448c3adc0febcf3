"""Flags of predict.py."""

from __future__ import annotations

from absl import flags

from flags import eval_flags, train_flags
from loops.prediction import PREDICT_WEIGHTS, PredictConfig

FLAGS = flags.FLAGS


def define_predict_flags():
    eval_flags.define_ckpt_flag()
    eval_flags.define_precision_flags()
    flags.DEFINE_string("image_dir", None, "Directory of images to classify (every file under it, sorted).")
    flags.DEFINE_string("image", None, "A single image file to classify (instead of --image_dir).")
    flags.DEFINE_integer("predict_batch_size", 32, "Images per forward pass.")
    flags.DEFINE_integer("top_k", 5, "Classes reported per image.")
    flags.DEFINE_enum("weights", None, list(PREDICT_WEIGHTS), "Weights to use (default: EMA when the checkpoint "
                      "has them, else raw).")
    flags.DEFINE_integer("img_size", None, "Input resolution (default: the run's --eval_img_size).")
    flags.DEFINE_enum("resize_method", None, ["bilinear", "bicubic"], "Resize interpolation (default: the run's).")
    flags.DEFINE_string("output", "predictions.jsonl", "Where predictions are written: *.csv as CSV, anything "
                        "else as JSON lines; empty: not written.")


def predict_config_from_flags() -> PredictConfig:
    """The one place predict.py reads flags; raises ValueError naming the flag at fault."""
    return PredictConfig(
        ckpt=eval_flags.required("ckpt"), image_dir=FLAGS.image_dir, image=FLAGS.image,
        batch_size=FLAGS.predict_batch_size, top_k=FLAGS.top_k, weights=FLAGS.weights,
        precision=train_flags.precision_from_flags(), img_size=FLAGS.img_size, resize_method=FLAGS.resize_method,
        output=FLAGS.output or None)
