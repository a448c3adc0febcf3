"""Small generated datasets in every supported on-disk layout, for tests and the benchmark."""
from __future__ import annotations

import io
import os

import numpy as np


def image_array(seed: int, height: int = 40, width: int = 48, label: int = 0) -> np.ndarray:
    """A smooth random image (compresses like a photo, unlike noise) tinted by its label."""
    rng = np.random.RandomState(seed)
    small = rng.rand(max(2, height // 8), max(2, width // 8), 3)
    from PIL import Image

    img = Image.fromarray((small * 255).astype("uint8")).resize((width, height), Image.BILINEAR)
    arr = np.asarray(img).astype("float32")
    arr[..., label % 3] = np.clip(arr[..., label % 3] * 0.5 + 120, 0, 255)
    return arr.astype("uint8")


def encode(arr: np.ndarray, fmt: str = "jpg") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
    return buf.getvalue()


def make_image_folder(root: str, num_classes: int = 3, train_per_class: int = 4, val_per_class: int = 2,
                      size: tuple[int, int] = (40, 48), formats: tuple[str, ...] = ("jpg", "png")) -> str:
    """root/train/class_k/*.jpg|png and root/validation/class_k/*; formats alternate per image."""
    k = 0
    for split, per in (("train", train_per_class), ("validation", val_per_class)):
        for c in range(num_classes):
            d = os.path.join(root, split, f"class_{c}")
            os.makedirs(d, exist_ok=True)
            for i in range(per):
                fmt = formats[k % len(formats)]
                with open(os.path.join(d, f"img_{i:03d}.{fmt}"), "wb") as f:
                    f.write(encode(image_array(k, *size, label=c), fmt))
                k += 1
    return root


def example(image_bytes: bytes, label: int, text: str | None = None) -> bytes:
    import tensorflow as tf

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    if text is not None:
        feature["image/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(out_dir: str, split: str, shards: list[list[tuple[bytes, int]]], texts: bool = False) -> list[str]:
    """Foreign ImageNet-format shards (no count or labels file): shards[k] = [(image_bytes, stored_label)]."""
    import tensorflow as tf

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k, records in enumerate(shards):
        path = os.path.join(out_dir, f"{split}-{k:05d}-of-{len(shards):05d}")
        with tf.io.TFRecordWriter(path) as w:
            for data, label in records:
                w.write(example(data, label, f"name{label}" if texts else None))
        paths.append(path)
    return paths


def labelled_shards(out_dir: str, split: str, sizes: list[int], start_label: int = 0, offset: int = 1,
                    size: tuple[int, int] = (36, 36)) -> list[str]:
    """Shards whose records all have distinct labels (start_label, start_label+1, ...), so a label
    identifies its record: used to check which records a worker sees."""
    shards, lab = [], start_label
    for n in sizes:
        recs = []
        for _ in range(n):
            recs.append((encode(image_array(lab, *size, label=lab)), lab + offset))
            lab += 1
        shards.append(recs)
    return write_shards(out_dir, split, shards)
