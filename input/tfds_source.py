"""TFDS image-classification datasets, read from their prepared TFRecord files (never downloaded here).

The prepared files are ordinary TFRecords of tf.train.Example, so they go through the same per-shard
reader as ImageNet-format shards; only the feature keys differ and labels are 0-based.
"""
from __future__ import annotations

import os

from input.config import DataConfig, DatasetInfo, Shard
from input.sources import tfds_names


EVAL_SPLITS = ("validation", "test")


def _what_to_put_where(name: str, data_dir: str, builder) -> str:
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        if name.startswith("imagenet2012"):
            files = "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"
        else:
            files = "the files described by: " + " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
        return (f"TFDS dataset {name!r} is not prepared under --data_dir {data_dir}. Put {files} in a directory "
                f"and pass it as --manual_dir; it is then prepared once, offline, into {data_dir}.")
    return (f"TFDS dataset {name!r} is not prepared under --data_dir {data_dir}, and nothing is downloaded at run "
            f"time. Prepare it on a machine with internet access (tfds build {name} --data_dir {data_dir}) and "
            f"copy {data_dir}/{name} here.")


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except Exception as e:  # DatasetNotFoundError and friends: name typos, unknown configs
        raise ValueError(f"--dataset {name!r} is not a TFDS dataset known to this tensorflow-datasets: {e}") from e


def _prepare_offline(builder, name: str, data_dir: str, manual_dir: str) -> None:
    import tensorflow_datasets as tfds

    if name.startswith("imagenet2012"):
        missing = [f for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
                   if not os.path.exists(os.path.join(manual_dir, f))]
        if missing:
            raise FileNotFoundError(f"--manual_dir {manual_dir} lacks {', '.join(missing)}; TFDS {name} is "
                                    f"prepared from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar there")
    print(f"input: preparing TFDS {name} offline from --manual_dir {manual_dir} into {data_dir} (once)", flush=True)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False,
                                          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(download_config=config, file_format="tfrecord")


def open_tfds(cfg: DataConfig) -> DatasetInfo:
    import tensorflow_datasets as tfds

    data_dir = cfg.data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    name = cfg.dataset
    if not name:
        names = tfds_names(data_dir) if os.path.isdir(data_dir) else []
        if len(names) != 1:
            raise ValueError(f"--data_dir {data_dir} holds TFDS datasets {names or 'none'}; choose one with --dataset")
        name = names[0]
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        if cfg.manual_dir and getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            _prepare_offline(builder, name, data_dir, cfg.manual_dir)
            builder = _builder(name, data_dir)
        else:
            raise FileNotFoundError(_what_to_put_where(name, data_dir, builder))

    info = builder.info
    fmt = str(getattr(info, "file_format", "tfrecord")).lower()
    if "tfrecord" not in fmt:
        raise ValueError(f"TFDS {name} in {data_dir} is stored as {fmt}; only the tfrecord file format is supported")
    image_key, label_key = info.supervised_keys if info.supervised_keys else ("image", "label")
    label_feature = info.features[label_key]
    if not isinstance(info.features[image_key], tfds.features.Image) or not hasattr(label_feature, "num_classes"):
        raise ValueError(f"TFDS {name} is not an image-classification dataset (supervised keys {image_key}, "
                         f"{label_key})")

    def shards(split):
        if split not in info.splits:
            return ()
        s = info.splits[split]
        paths = [os.path.join(builder.data_dir, os.path.basename(f)) for f in s.filenames]
        return tuple(Shard(p, int(n)) for p, n in zip(paths, s.shard_lengths))

    train = shards("train")
    eval_split = next((s for s in EVAL_SPLITS if s in info.splits), None)
    evals = shards(eval_split) if eval_split else ()
    return DatasetInfo(
        source="tfds",
        description=f"TFDS {info.full_name} in {data_dir} (train: {len(train)} files, "
        f"{sum(s.num_records for s in train)} records; {eval_split}: {len(evals)} files)",
        num_classes=label_feature.num_classes,
        class_names=tuple(label_feature.names),
        num_train_examples=sum(s.num_records for s in train),
        num_eval_examples=sum(s.num_records for s in evals),
        train_shards=train,
        eval_shards=evals,
        image_key=image_key,
        label_key=label_key,
        label_offset=0,
    )
