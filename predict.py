"""Classify images: `python predict.py --ckpt MODEL_DIR_OR_PREFIX --image_dir infer_data/images` (or --image FILE)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from flags import predict_flags  # noqa: E402

predict_flags.define_predict_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = predict_flags.predict_config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from loops import prediction
    try:
        result = prediction.predict(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 1
    print(prediction.format_rows(result.rows))
    for r in result.errors:
        print(f"predict.py: could not read {r['file']}: {r['error']}", file=sys.stderr)
    print(f"({result.weights} weights) " + prediction.format_metrics(result.metrics))
    if result.output:
        print(f"Predictions written to {result.output}")
    # Some predictions are still a useful result; none at all is a failure.
    return 0 if result.metrics["images"] else 1


if __name__ == "__main__":
    app.run(main)
