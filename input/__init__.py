"""Input pipeline: files on disk -> batches of (images, labels).

Sources: ImageNet-format TFRecord shards, TFDS datasets, plain image folders, and the embedded digits demo.
The configs (input.config) are plain Python and load at once; the TensorFlow parts on first use (PEP 562),
so command-line parsing does not pay for TensorFlow.
"""
import importlib

from input.config import AugmentConfig, DataConfig, DatasetInfo, EvalPreprocessing, Preprocessing, Shard

_TENSORFLOW_PARTS = {
    "mix_batch": "input.mixing", "eval_dataset": "input.pipeline", "eval_records": "input.pipeline",
    "eval_steps": "input.pipeline", "train_dataset": "input.pipeline", "train_records": "input.pipeline",
    "worker_input_context": "input.pipeline", "preprocess_for_eval": "input.preprocessing",
    "preprocess_for_train": "input.preprocessing", "open_dataset": "input.datasets",
    "median_short_side": "input.image_sizes",
}

__all__ = ["AugmentConfig", "DataConfig", "DatasetInfo", "EvalPreprocessing", "Preprocessing", "Shard",
           *_TENSORFLOW_PARTS]


def __getattr__(name):
    if name not in _TENSORFLOW_PARTS:
        raise AttributeError(f"module 'input' has no attribute {name!r}")
    return getattr(importlib.import_module(_TENSORFLOW_PARTS[name]), name)
