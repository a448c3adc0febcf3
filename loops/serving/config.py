"""The configs of predict.py and export.py (settings declared once: flags.settings). Plain Python."""

from __future__ import annotations

import dataclasses

from flags.settings import POSITIVE, require, required, setting
from input.config import RESIZE_METHODS
from loops.config import CheckpointSettings, PrecisionSettings

SERVED_WEIGHTS = ("ema", "raw")
EXPORT_FORMATS = ("savedmodel", "keras")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingSettings(CheckpointSettings):
    """Which trained network is served and how images reach it; None: what the run recorded in run_spec.json."""

    weights: str | None = setting(None, "Weights to use (default: EMA when the checkpoint has them, else raw).",
                                  choices=SERVED_WEIGHTS)
    top_k: int = setting(5, "Classes reported per image.", rule=POSITIVE)
    img_size: int | None = setting(None, "Input resolution (default: the run's --eval_img_size).", rule=POSITIVE)
    resize_method: str | None = setting(None, "Resize interpolation (default: the run's).", choices=RESIZE_METHODS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictConfig(ServingSettings, PrecisionSettings):
    image_dir: str | None = setting(None, "Directory of images to classify (every file under it, sorted).")
    image: str | None = setting(None, "A single image file to classify (instead of --image_dir).")
    batch_size: int = setting(32, "Images per forward pass.", flag="predict_batch_size", rule=POSITIVE)
    output: str | None = setting("predictions.jsonl", "Where predictions are written: *.csv as CSV, anything else "
                                                      "as JSON lines; empty: not written.")

    def validate(self):
        super().validate()
        require((self.image_dir is None) != (self.image is None), "image_dir", self.image_dir,
                "pass exactly one of --image_dir and --image")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig(ServingSettings):
    format: str = setting("savedmodel", "What to write: savedmodel (a directory with serving signatures) or keras "
                                        "(a keras.applications.EfficientNetB<k> weights file: Keras 3's layout "
                                        "for a name ending in .weights.h5, else the released .h5 files' layout).",
                          choices=EXPORT_FORMATS)
    output: str | None = setting(None, "SavedModel directory (or, with --format keras, weights file) to write.")
    overwrite: bool = setting(False, "Replace a non-empty --output directory (or an existing file).")

    def validate(self):
        super().validate()
        required(self.output, "output", "the SavedModel directory or weights file to write")
        require(self.format != "keras" or self.output.endswith(".h5"), "output", self.output,
                "a Keras weights file name ends in .h5 (or .weights.h5), which is how Keras picks its reader")
