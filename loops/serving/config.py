"""The configs of predict.py and export.py (settings declared once: flags.settings). Plain Python."""

from __future__ import annotations

import dataclasses

from flags.settings import NON_NEGATIVE, POSITIVE, each_of, group, require, required, setting, within
from input.config import DataConfig, EvalPreprocessing
from loops.config import SERVING_BACKENDS, CheckpointSettings, PrecisionSettings

SERVED_WEIGHTS = ("ema", "raw")
EXPORT_FORMATS = ("savedmodel", "onnx", "tflite", "keras")
TFLITE_PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_REQUIREMENTS = "requirements-export.txt"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingSettings(CheckpointSettings):
    """Which trained network is served; None: what the run recorded in run_spec.json."""

    weights: str | None = setting(None, "Weights to use (default: EMA when the checkpoint has them, else raw).",
                                  choices=SERVED_WEIGHTS)
    top_k: int = setting(5, "Classes reported per image.", rule=POSITIVE)
    img_size: int | None = setting(None, "Input resolution (default: the run's --eval_img_size).", rule=POSITIVE)
    preprocess: EvalPreprocessing = group(EvalPreprocessing)  # None: the run's crop and interpolation


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictConfig(ServingSettings, PrecisionSettings):
    model: str | None = setting(None, "An artifact written by export.py to run instead of --ckpt: its output "
                                      "directory, or a model.onnx / model_*.tflite file in it.")
    backend: str | None = setting(None, "Runtime: tf, onnxruntime or tflite (LiteRT). Default: tf for --ckpt; for "
                                        "--model, what the file is, and for an export directory onnxruntime when "
                                        "it holds model.onnx and ONNX Runtime is installed, else tf.",
                                  choices=SERVING_BACKENDS)
    image_dir: str | None = setting(None, "Directory of images to classify (every file under it, sorted).")
    image: str | None = setting(None, "A single image file to classify (instead of --image_dir).")
    batch_size: int = setting(32, "Images per forward pass.", flag="predict_batch_size", rule=POSITIVE)
    output: str | None = setting(None, "Where predictions are written: *.csv as CSV, anything else as JSON lines. "
                                       "Default: not written (they are printed).")

    def require_checkpoint(self):
        require((self.ckpt is None) != (self.model is None), "model", self.model,
                "pass exactly one of --ckpt (a checkpoint) and --model (an exported artifact)")

    def validate(self):
        super().validate()
        require((self.image_dir is None) != (self.image is None), "image_dir", self.image_dir,
                "pass exactly one of --image_dir and --image")
        require(self.model is None or self.weights is None, "weights", self.weights,
                "applies to --ckpt; an exported --model holds the weights it was exported with")
        require(self.model is None or self.img_size is None, "img_size", self.img_size,
                "applies to --ckpt; an exported --model has its own input size")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig(ServingSettings):
    output: str | None = setting(None, "Directory to write: the SavedModel (at its root, as TF Serving expects) "
                                       "and the other formats' files beside it.")
    overwrite: bool = setting(False, "Replace a non-empty --output directory.")
    formats: tuple[str, ...] = setting(
        (), "Artifacts to write: savedmodel, onnx, tflite, keras (a keras.applications.EfficientNetB<k> weights "
            "file, keras_weights.h5) as a comma list, or the flag repeated. Default: savedmodel, plus onnx when the "
            f"optional {EXPORT_REQUIREMENTS} is installed.", flag="format", parse=tuple,
        repeatable=True, rule=each_of(EXPORT_FORMATS))
    tflite_precisions: tuple[str, ...] = setting(
        ("fp32",), "TFLite files to write with --format tflite: fp32, fp16 (float16 weights), int8 (post-training "
                   "full-integer quantization calibrated on training images).", parse=tuple,
        rule=each_of(TFLITE_PRECISIONS))
    calibration_steps: int = setting(100, "Training images (of --data_dir) that int8 quantization calibrates "
                                          "activation ranges on.", rule=POSITIVE)
    check_images: int = setting(64, "Evaluation images (of --data_dir) every artifact's self-check runs.",
                                rule=POSITIVE)
    max_probability_difference: float = setting(
        1e-4, "Self-check: largest difference from the unexported model's probabilities a float32 artifact "
              "(SavedModel, ONNX, TFLite fp32) may show.", rule=NON_NEGATIVE)
    min_quantized_agreement: float = setting(
        0.9, "Self-check: share of check images on which a quantized TFLite artifact (fp16, int8) must give the "
             "unexported model's top-1.", rule=within(0, 1))
    eval: bool = setting(False, "Also report each artifact's top-1 on the whole evaluation set of --data_dir.")
    data: DataConfig = group(DataConfig)

    def validate(self):
        super().validate()
        required(self.output, "output", "the directory to write")
