"""Opening the configured data: --data_dir / --dataset resolved into a DatasetInfo (files, counts, classes),
from the demo, TFRecord shards, an image folder or a prepared TFDS dataset."""

from __future__ import annotations

from input import demo, tfds_source
from input.config import DataConfig, DatasetInfo
from input.sources import detect_source, open_image_folder, open_tfrecord_dir


def open_dataset(cfg: DataConfig) -> DatasetInfo:
    """Raises FileNotFoundError/ValueError naming what is wrong with the input."""
    if cfg.data_dir is None and not cfg.dataset:
        return demo.open_demo(cfg)
    source = detect_source(cfg)
    if source == "tfrecord":
        return open_tfrecord_dir(cfg.data_dir, labels_zero_based=cfg.labels_zero_based, num_classes=cfg.num_classes)
    if source == "folder":
        return open_image_folder(cfg.data_dir)
    return tfds_source.open_tfds(cfg)
