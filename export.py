"""Export a checkpoint for serving: `python export.py --ckpt MODEL_DIR_OR_PREFIX --output DIR
[--format savedmodel,onnx,tflite] [--tflite_precisions fp32,fp16,int8] [--eval]` (also `python -m export ...`).

The SavedModel (signatures serving_default: encoded image bytes, serving_uint8: pixels, serving_pixels:
preprocessed pixels) sits at the root of DIR, model.onnx and model_<precision>.tflite beside it; every
artifact is run by its own runtime and compared with the unexported model before DIR is put in place.
docs/deployment.md has each artifact's input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flags import cli  # noqa: E402
from loops.serving.config import ExportConfig  # noqa: E402
from loops.serving.dependencies import MissingDependencyError  # noqa: E402


def work(cfg: ExportConfig) -> int:
    from absl import logging

    from loops.serving.export import export

    logging.set_verbosity(logging.WARNING)  # tf.saved_model.save logs every file it writes at INFO

    info = export(cfg)
    print(f"Export written to {info['output']} ({info['model']}, {info['weights']} weights, {info['image_size']} px):")
    for a in info["artifacts"].values():
        top1 = "" if a["eval_top1"] is None else f"; eval top-1 {a['eval_top1']:.4f}"
        print(f"  {a['name']}: {a['path']} ({a['backend']}): input {a['input']}; output {a['output']}{top1}")
    return 0


if __name__ == "__main__":
    cli.run("export.py", ExportConfig, work, errors=(MissingDependencyError,))
