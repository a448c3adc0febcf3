"""Finding the data on disk: which layout --data_dir holds, and the TFRecord and image-folder readers.

Everything here is plain Python on file names and file headers; no image is decoded.
"""
from __future__ import annotations

import glob
import json
import os
import struct

from input.config import DataConfig, DatasetInfo, Shard

TRAIN_PATTERN = "train-*"
EVAL_PATTERN = "validation-*"
# Written by input.build_tfrecords next to the shards; lets open_dataset skip counting records.
INFO_FILE = "dataset_info.json"
LABELS_FILE = "labels.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_LOOKED_FOR = (
    "  - ImageNet-format TFRecord shards: {d}/train-* and/or {d}/validation-*\n"
    "  - an image folder: {d}/train/<class>/*.jpg|*.png and {d}/validation/<class>/*.jpg|*.png\n"
    "  - a prepared TFDS dataset: {d}/<name>/<version>/dataset_info.json (select it with --dataset <name>)"
)


def count_tfrecords(path: str) -> int:
    """Counts records by walking the length headers, so no record payload is read."""
    n = 0
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"TFRecord file {path} is truncated after record {n - 1} (byte {pos})")
            (length,) = struct.unpack("<Q", header[:8])
            pos += 12 + length + 4
            if pos > size:
                raise ValueError(f"TFRecord file {path} is truncated inside record {n} (byte {pos - length - 16})")
            f.seek(pos)
            n += 1
    return n


def _is_tfrecord_dir(d: str) -> bool:
    return bool(glob.glob(os.path.join(d, TRAIN_PATTERN)) or glob.glob(os.path.join(d, EVAL_PATTERN)))


def _is_folder_dir(d: str) -> bool:
    return any(
        os.path.isdir(os.path.join(d, split)) and _class_dirs(os.path.join(d, split))
        for split in ("train", "validation")
    )


def _class_dirs(split_dir: str) -> list[str]:
    return sorted(e for e in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, e)))


def tfds_names(d: str) -> list[str]:
    names = []
    for name in sorted(os.listdir(d)):
        if glob.glob(os.path.join(d, name, "*", "dataset_info.json")) or glob.glob(
            os.path.join(d, name, "*", "*", "dataset_info.json")
        ):
            names.append(name)
    return names


def detect_source(cfg: DataConfig) -> str:
    if cfg.source != "auto":
        return cfg.source
    if cfg.dataset:
        return "tfds"
    d = cfg.data_dir
    if not os.path.isdir(d):
        raise FileNotFoundError(f"--data_dir {d} does not exist. It should hold one of:\n" + _LOOKED_FOR.format(d=d))
    if _is_tfrecord_dir(d):
        return "tfrecord"
    if _is_folder_dir(d):
        return "folder"
    if tfds_names(d):
        return "tfds"
    what = "is empty" if not os.listdir(d) else "holds no dataset in a known layout"
    raise FileNotFoundError(f"--data_dir {d} {what}. Looked for:\n" + _LOOKED_FOR.format(d=d))


# --------------------------------------------------------------------------------------- TFRecord shards
def _shards(d: str, pattern: str, counts: dict[str, int] | None) -> tuple[Shard, ...]:
    files = sorted(p for p in glob.glob(os.path.join(d, pattern)) if not p.endswith(".tmp"))
    out = []
    for p in files:
        n = counts.get(os.path.basename(p)) if counts else None
        out.append(Shard(p, n if n is not None else count_tfrecords(p)))
    return tuple(out)


def _read_converter_info(d: str) -> dict | None:
    path = os.path.join(d, INFO_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        info = json.load(f)
    # A count file only counts if it describes exactly the shards present now.
    present = {os.path.basename(p)
               for p in glob.glob(os.path.join(d, TRAIN_PATTERN)) + glob.glob(os.path.join(d, EVAL_PATTERN))}
    if set(info.get("shard_counts", {})) != present:
        return None
    return info


def _scan_labels(files: list[str]) -> tuple[int, dict[int, str]]:
    """Reads only labels and class texts of every record (slow path for foreign shards)."""
    import tensorflow as tf

    spec = {
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=4).batch(1024).map(
        tf.autograph.experimental.do_not_convert(lambda s: tf.io.parse_example(s, spec)))
    max_label, names = -1, {}
    for b in ds.as_numpy_iterator():
        max_label = max(max_label, int(b["image/class/label"].max()))
        for lab, text in zip(b["image/class/label"], b["image/class/text"]):
            if text and int(lab) not in names:
                names[int(lab)] = text.decode("utf-8", "replace")
    return max_label, names


def open_tfrecord_dir(d: str, *, labels_zero_based: bool = False, num_classes: int | None = None) -> DatasetInfo:
    if not os.path.isdir(d):
        raise FileNotFoundError(f"--data_dir {d} does not exist (looked for TFRecord shards {d}/train-*, "
                                f"{d}/validation-*)")
    conv = _read_converter_info(d)
    counts = conv["shard_counts"] if conv else None
    train, evals = _shards(d, TRAIN_PATTERN, counts), _shards(d, EVAL_PATTERN, counts)
    if not train and not evals:
        raise FileNotFoundError(f"--data_dir {d} has no TFRecord shards matching {TRAIN_PATTERN} or {EVAL_PATTERN}")
    offset = 0 if labels_zero_based else 1
    names: tuple[str, ...] = ()
    labels_path = os.path.join(d, LABELS_FILE)
    if os.path.exists(labels_path):
        with open(labels_path) as f:
            names = tuple(line.rstrip("\n") for line in f if line.strip())
    if conv and not names:
        names = tuple(conv["class_names"])
    if num_classes is None and names:
        num_classes = len(names)
    if num_classes is None:
        scan = evals or train
        print(f"input: {d} has no {LABELS_FILE}; scanning the labels of {len(scan)} shard(s) to count classes "
              f"(pass --num_classes to skip this)", flush=True)
        max_label, texts = _scan_labels([s.path for s in scan])
        num_classes = max_label + 1 - offset
        if num_classes < 1:
            raise ValueError(f"labels in {d} are all below {offset}; are they 0-based? (see --labels_zero_based)")
        names = tuple(texts.get(i + offset, str(i)) for i in range(num_classes))
    if len(names) != num_classes:
        names = tuple(str(i) for i in range(num_classes))
    n_train, n_eval = sum(s.num_records for s in train), sum(s.num_records for s in evals)
    return DatasetInfo(
        source="tfrecord",
        description=f"tfrecord shards in {d} (train-*: {len(train)} files, {n_train} records; "
        f"validation-*: {len(evals)} files, {n_eval} records)",
        num_classes=num_classes,
        class_names=names,
        num_train_examples=n_train,
        num_eval_examples=n_eval,
        train_shards=train,
        eval_shards=evals,
        label_offset=offset,
    )


# --------------------------------------------------------------------------------------- image folder
def list_image_folder(d: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Returns class names (from train/, else validation/) and per split the sorted (path, label) pairs."""
    splits = {s: os.path.join(d, s) for s in ("train", "validation") if os.path.isdir(os.path.join(d, s))}
    if not splits:
        raise FileNotFoundError(f"image folder {d} has neither {d}/train/<class>/ nor {d}/validation/<class>/")
    classes = _class_dirs(splits.get("train") or splits["validation"])
    if not classes:
        raise FileNotFoundError(f"image folder {d} has no class subdirectories in {next(iter(splits.values()))}")
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, sd in splits.items():
        pairs = []
        for c in _class_dirs(sd):
            if c not in index:
                raise ValueError(f"class directory {os.path.join(sd, c)} does not exist in {splits.get('train')}; "
                                 f"validation classes must be a subset of the training classes")
            for root, _, files in os.walk(os.path.join(sd, c)):
                pairs += [(os.path.join(root, f), index[c]) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        out[split] = sorted(pairs)
    return classes, out


def open_image_folder(d: str) -> DatasetInfo:
    classes, pairs = list_image_folder(d)
    train = tuple(Shard(p, 1, lab) for p, lab in pairs.get("train", []))
    evals = tuple(Shard(p, 1, lab) for p, lab in pairs.get("validation", []))
    if not train and not evals:
        raise FileNotFoundError(f"image folder {d} has class directories but no *.jpg/*.jpeg/*.png files in them")
    return DatasetInfo(
        source="folder",
        description=f"image folder {d} ({len(classes)} classes; train: {len(train)} images, validation: "
                    f"{len(evals)} images)",
        num_classes=len(classes),
        class_names=tuple(classes),
        num_train_examples=len(train),
        num_eval_examples=len(evals),
        train_shards=train,
        eval_shards=evals,
        label_offset=0,
    )
