"""Classify images: `python predict.py --ckpt MODEL_DIR_OR_PREFIX --image_dir infer_data/images` (or --image FILE)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flags import cli  # noqa: E402
from loops.serving.config import PredictConfig  # noqa: E402


def work(cfg: PredictConfig) -> int:
    from loops.serving import prediction

    result = prediction.predict(cfg)
    print(prediction.format_rows(result.rows))
    for r in result.errors:
        print(f"predict.py: could not read {r['file']}: {r['error']}", file=sys.stderr)
    print(f"({result.weights} weights) " + prediction.format_metrics(result.metrics))
    if result.output:
        print(f"Predictions written to {result.output}")
    # Some predictions are still a useful result; none at all is a failure.
    return 0 if result.metrics["images"] else 1


if __name__ == "__main__":
    cli.run("predict.py", PredictConfig, work)
