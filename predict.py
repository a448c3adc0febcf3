"""Classify images: `python predict.py --ckpt MODEL_DIR_OR_PREFIX --image_dir infer_data/images` (or --image FILE),
or with an export: `python predict.py --model EXPORT_DIR [--backend onnxruntime|tflite|tf] --image FILE`."""

import os
import sys



def _native_logs_off():
    """TensorFlow's and LiteRT's C++ log lines (e.g. "Input file read error" for a corrupt file, oneDNN and
    XNNPACK notices) repeat, less clearly, what the one-line messages below say. TensorFlow 2.21 logs some of
    them through absl before TF_CPP_MIN_LOG_LEVEL applies, so the process's native stderr goes to /dev/null
    and Python's sys.stderr (our messages, tracebacks) keeps the terminal. TF_CPP_MIN_LOG_LEVEL below 3 in
    the environment keeps the native lines, for debugging."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") < "3":
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    terminal = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)


_native_logs_off()

from flags import cli  # noqa: E402
from loops.serving.config import PredictConfig  # noqa: E402
from loops.serving.dependencies import MissingDependencyError  # noqa: E402


def work(cfg: PredictConfig) -> int:
    from loops.serving import prediction

    result = prediction.predict(cfg)
    print(prediction.format_rows(result.rows))
    for r in result.errors:
        print(f"predict.py: could not read {r['file']}: {r['error']}", file=sys.stderr)
    print(f"({result.source}, {result.weights} weights, {result.runtime}) " + prediction.format_metrics(result.metrics))
    print(f"Predictions written to {result.output}" if result.output
          else "Predictions not written to a file (pass --output FILE.jsonl or FILE.csv).")
    # Some predictions are still a useful result; none at all is a failure.
    return 0 if result.metrics["images"] else 1


if __name__ == "__main__":
    cli.run("predict.py", PredictConfig, work, errors=(MissingDependencyError,))
