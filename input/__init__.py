"""Input pipeline: files on disk -> batches of (images, labels).

Sources: ImageNet-format TFRecord shards, TFDS datasets, plain image folders, and the embedded digits demo.
"""
from input.config import AugmentConfig, DataConfig, DatasetInfo, Shard
from input.mixing import mix_batch
from input.pipeline import (eval_dataset, eval_records, eval_steps, train_dataset, train_records,
                            worker_input_context)
from input.preprocessing import preprocess_for_eval, preprocess_for_train
from input.sources import open_dataset

__all__ = [
    "AugmentConfig", "DataConfig", "DatasetInfo", "Shard", "eval_dataset", "eval_records", "eval_steps",
    "mix_batch", "open_dataset", "preprocess_for_eval", "preprocess_for_train", "train_dataset", "train_records",
    "worker_input_context",
]
