"""Export a SavedModel for serving: `python export.py --ckpt MODEL_DIR_OR_PREFIX --output DIR`
(also `python -m export ...`). Signatures: serving_default (encoded image bytes), serving_uint8 (pixels)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from flags import export_flags  # noqa: E402

export_flags.define_export_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = export_flags.export_config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from loops.export import export
    try:
        info = export(cfg)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    print(f"SavedModel written to {cfg.output} ({info['model']}, {info['weights']} weights, "
          f"{info['image_size']} px, top {info['top_k']}); signatures: "
          + "; ".join(f"{k}({v})" for k, v in info["signatures"].items()))
    return 0


if __name__ == "__main__":
    app.run(main)
