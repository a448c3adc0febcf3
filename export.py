"""Export a SavedModel for serving: `python export.py --ckpt MODEL_DIR_OR_PREFIX --output DIR`
(also `python -m export ...`). Signatures: serving_default (encoded image bytes), serving_uint8 (pixels),
serving_pixels (preprocessed pixels). `--format keras --output FILE.h5`: a keras.applications weights file."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flags import cli  # noqa: E402
from loops.serving.config import ExportConfig  # noqa: E402


def work(cfg: ExportConfig) -> int:
    if cfg.format == "keras":
        from loops.serving.keras_weights import export_keras_weights

        info = export_keras_weights(cfg)
        print(f"Keras Applications weights written to {cfg.output} ({info['model']}, {info['num_classes']} classes, "
              f"{info['weights']} weights, {info['layout']}); load with {info['load_with']}")
        return 0
    from loops.serving.export import export

    info = export(cfg)
    print(f"SavedModel written to {cfg.output} ({info['model']}, {info['weights']} weights, "
          f"{info['image_size']} px, top {info['top_k']}); signatures: "
          + "; ".join(f"{k}({v})" for k, v in info["signatures"].items()))
    return 0


if __name__ == "__main__":
    cli.run("export.py", ExportConfig, work)
