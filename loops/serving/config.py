"""The configs of predict.py and export.py (settings declared once: flags.settings). Plain Python."""

from __future__ import annotations

import dataclasses

from flags.settings import POSITIVE, group, require, required, setting
from input.config import EvalPreprocessing
from loops.config import CheckpointSettings, PrecisionSettings

SERVED_WEIGHTS = ("ema", "raw")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingSettings(CheckpointSettings):
    """Which trained network is served and how images reach it; None: what the run recorded in run_spec.json."""

    weights: str | None = setting(None, "Weights to use (default: EMA when the checkpoint has them, else raw).",
                                  choices=SERVED_WEIGHTS)
    top_k: int = setting(5, "Classes reported per image.", rule=POSITIVE)
    img_size: int | None = setting(None, "Input resolution (default: the run's --eval_img_size).", rule=POSITIVE)
    preprocess: EvalPreprocessing = group(EvalPreprocessing)  # None: the run's crop and interpolation


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
    output: str | None = setting(None, "SavedModel directory to write.")
    overwrite: bool = setting(False, "Replace a non-empty --output directory.")

    def validate(self):
        super().validate()
        required(self.output, "output", "the SavedModel directory to write")
