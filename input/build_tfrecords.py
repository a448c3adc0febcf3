"""Converts an image folder into ImageNet-format TFRecord shards.

    python -m input.build_tfrecords --image_dir DIR --output_dir OUT --num_shards N [--num_validation_shards M]

DIR holds train/<class>/*.jpg|png and/or validation/<class>/*.jpg|png. OUT receives train-00000-of-0000N,
validation-*, labels.txt (class i on line i, stored label i+1) and dataset_info.json (per-shard counts, so
readers never have to count). Shards are written by worker processes to *.tmp and renamed when complete, so
a rerun after an interruption keeps the finished shards and writes only the missing ones.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import random
import sys

from input.sources import INFO_FILE, LABELS_FILE, list_image_folder

STATE_FILE = ".build_state.json"


def _example(path: str, label: int, text: str):
    import tensorflow as tf
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()  # a truncated or garbled file must fail here, not in a training run months later
            width, height = im.size
            # TF decodes RGB/grey JPEG and any PNG; everything else (CMYK JPEG, GIF, ...) is re-encoded.
            if fmt not in ("JPEG", "PNG") or (fmt == "JPEG" and im.mode not in ("RGB", "L")):
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="JPEG", quality=95)
                data, fmt = buf.getvalue(), "JPEG"
    except Exception as e:  # PIL raises many exception types for bad files
        raise ValueError(f"cannot decode image {path}: {e}") from e

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    feature = {
        "image/encoded": b(data),
        "image/format": b(fmt.encode()),
        "image/class/label": i(label + 1),
        "image/class/text": b(text.encode()),
        "image/height": i(height),
        "image/width": i(width),
        "image/channels": i(3),
        "image/filename": b(os.path.basename(path).encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shard(out_path: str, items: list[tuple[str, int]], class_names: list[str]) -> int:
    import tensorflow as tf

    tmp = out_path + ".tmp"
    with tf.io.TFRecordWriter(tmp) as w:
        for path, label in items:
            w.write(_example(path, label, class_names[label]))
    os.replace(tmp, out_path)
    return len(items)


def _split(items: list, n: int) -> list[list]:
    q, r = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        end = start + q + (1 if k < r else 0)
        out.append(items[start:end])
        start = end
    return out


def _fingerprint(plan: dict) -> str:
    h = hashlib.sha1()
    for name in sorted(plan):
        h.update(name.encode())
        for path, label in plan[name]:
            h.update(f"{path}\0{label}\0{os.path.getsize(path)}\n".encode())
    return h.hexdigest()


def build(image_dir: str, output_dir: str, num_shards: int, num_validation_shards: int | None = None,
          num_workers: int | None = None, progress: bool = True) -> dict:
    """Writes the shards that are not there yet and returns the dataset_info.json contents."""
    if num_shards < 1:
        raise ValueError(f"--num_shards must be >= 1, got {num_shards}")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"--image_dir {image_dir} does not exist")
    classes, pairs = list_image_folder(image_dir)
    n_val = num_validation_shards or max(1, num_shards // 8)
    plan: dict[str, list[tuple[str, int]]] = {}
    for split, n in (("train", num_shards), ("validation", n_val)):
        items = list(pairs.get(split, []))
        if not items:
            continue
        # Fixed-seed shuffle: every shard mixes classes, and a resumed run reproduces the same assignment.
        random.Random(1234).shuffle(items)
        n = min(n, len(items))
        for k, chunk in enumerate(_split(items, n)):
            plan[f"{split}-{k:05d}-of-{n:05d}"] = chunk
    if not plan:
        raise FileNotFoundError(f"--image_dir {image_dir} holds no *.jpg/*.jpeg/*.png images under train/ or "
                                "validation/")

    os.makedirs(output_dir, exist_ok=True)
    fp = _fingerprint(plan)
    state_path = os.path.join(output_dir, STATE_FILE)
    if os.path.exists(state_path):
        with open(state_path) as f:
            old = json.load(f).get("fingerprint")
        if old != fp:
            raise ValueError(f"--output_dir {output_dir} holds a partial conversion of different images or shard "
                             f"counts; delete it or choose another --output_dir")
    else:
        with open(state_path, "w") as f:
            json.dump({"fingerprint": fp, "image_dir": os.path.abspath(image_dir)}, f)

    todo = [name for name in sorted(plan) if not os.path.exists(os.path.join(output_dir, name))]
    done_images = sum(len(plan[n]) for n in plan) - sum(len(plan[n]) for n in todo)
    total = sum(len(v) for v in plan.values())
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done_images, unit="img", desc="build_tfrecords", disable=not progress,
               file=sys.stderr)
    workers = min(num_workers or os.cpu_count() or 1, len(todo)) if todo else 0
    if workers <= 1:
        for name in todo:
            bar.update(write_shard(os.path.join(output_dir, name), plan[name], classes))
    else:
        # spawn: the parent has TensorFlow loaded, and forking a process with TF's thread pools can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            futs = [ex.submit(write_shard, os.path.join(output_dir, n), plan[n], classes) for n in todo]
            for fut in concurrent.futures.as_completed(futs):
                bar.update(fut.result())
    bar.close()

    info = {
        "format": "imagenet-tfrecord",
        "label_offset": 1,
        "num_classes": len(classes),
        "class_names": classes,
        "splits": {s: sum(len(v) for k, v in plan.items() if k.startswith(s + "-")) for s in ("train", "validation")},
        "shard_counts": {k: len(v) for k, v in plan.items()},
    }
    with open(os.path.join(output_dir, LABELS_FILE), "w") as f:
        f.write("".join(c + "\n" for c in classes))
    # Written last: its presence means every shard it lists is complete.
    tmp = os.path.join(output_dir, INFO_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(output_dir, INFO_FILE))
    return info


def main(argv):
    from absl import flags

    F = flags.FLAGS
    del argv
    try:
        info = build(F.image_dir, F.output_dir, F.num_shards, F.num_validation_shards or None, F.num_workers or None)
    except (FileNotFoundError, ValueError) as e:
        print(f"build_tfrecords: error: {e}", file=sys.stderr)
        return 1
    print(f"build_tfrecords: wrote {info['splits']['train']} train and {info['splits']['validation']} validation "
          f"images, {info['num_classes']} classes, to {F.output_dir}")
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("image_dir", None, "Image folder with train/<class>/* and validation/<class>/*.")
    flags.DEFINE_string("output_dir", None, "Where the shards, labels.txt and dataset_info.json go.")
    flags.DEFINE_integer("num_shards", 8, "Number of train-* shards.")
    flags.DEFINE_integer("num_validation_shards", 0, "Number of validation-* shards (0: num_shards // 8, at least 1).")
    flags.DEFINE_integer("num_workers", 0, "Worker processes (0: one per CPU core).")
    flags.mark_flags_as_required(["image_dir", "output_dir"])
    app.run(lambda argv: sys.exit(main(argv)))
