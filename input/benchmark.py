"""Input pipeline throughput: decode + crop + flip + resize + augment + batch, in images/second.

    python -m input.benchmark [--image_size 224] [--batch_size 64] [--batches 30] [--data_dir DIR]

Without --data_dir it writes synthetic ImageNet-like JPEGs (500x375, photo-sized files) through the converter
into a temporary directory first. Nothing is fed to a model: this is the rate the CPU can supply.

The same command times, on the same TFRecords, the straightforward pipeline this one is measured against
(issue 8): the whole JPEG decoded, then cropped, resized and flipped (decode_then_crop), then Keras's
RandAugment layer, once as the Keras guides use it (on batches) and once per example. The last lines compare
ours without a policy with decode_then_crop, and ours with AutoAugment with the faster Keras variant.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

KERAS_BASELINES = ("keras_randaugment_batch", "keras_randaugment_example")
BASELINES = ("decode_then_crop", *KERAS_BASELINES)


def synthetic_imagenet_like(root: str, num_images: int, seed: int = 0) -> None:
    """JPEGs of ImageNet's typical size whose file size (~100 KB) and so decode cost resemble photos."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    for k in range(num_images):
        d = os.path.join(root, "train", f"class_{k % 10}")
        os.makedirs(d, exist_ok=True)
        base = Image.fromarray((rng.rand(24, 32, 3) * 255).astype("uint8")).resize((500, 375), Image.BICUBIC)
        arr = np.asarray(base).astype("float32") + rng.normal(0, 18, (375, 500, 3))
        Image.fromarray(arr.clip(0, 255).astype("uint8")).save(os.path.join(d, f"{k:05d}.jpg"), quality=90)


def baseline_dataset(info, *, image_size: int, batch_size: int, randaugment: str | None):
    """The straightforward pipeline: same files, same parallelism (AUTOTUNE), same crop ranges and batching,
    but the whole JPEG is decoded before cropping; randaugment "batch" or "example" then applies
    keras.layers.RandAugment (2 ops, factor 0.5, values in [0, 255]) to batches or to single images. Records,
    not decoded images, are shuffled, with as many slots as ours uses."""
    import keras
    import tensorflow as tf

    from input.config import DEFAULT_CROP_AREA, DEFAULT_CROP_ASPECT
    from input.pipeline import shuffle_buffer_size
    from input.preprocessing import MAX_ATTEMPTS, MIN_OBJECT_COVERED

    autotune = tf.data.AUTOTUNE
    spec = {info.image_key: tf.io.FixedLenFeature([], tf.string), info.label_key: tf.io.FixedLenFeature([], tf.int64)}
    layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5)

    def decode_crop_resize(record):
        ex = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_jpeg(ex[info.image_key], channels=3)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            min_object_covered=MIN_OBJECT_COVERED, aspect_ratio_range=DEFAULT_CROP_ASPECT,
            area_range=DEFAULT_CROP_AREA, max_attempts=MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
        image = tf.slice(image, begin, size)
        image.set_shape([None, None, 3])
        image = tf.image.random_flip_left_right(tf.image.resize(image, [image_size, image_size]))
        label = tf.one_hot(ex[info.label_key] - info.label_offset, info.num_classes)
        return image, label

    def augment(images, labels):
        return layer(images, training=True), labels

    files = [s.path for s in info.train_shards]
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files)).repeat()
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20), cycle_length=min(16, len(files)),
                       num_parallel_calls=autotune)
    ds = ds.shuffle(shuffle_buffer_size(info, image_size)).map(decode_crop_resize, num_parallel_calls=autotune)
    if randaugment == "example":
        ds = ds.map(augment, num_parallel_calls=autotune)
    ds = ds.batch(batch_size, drop_remainder=True)
    if randaugment == "batch":
        ds = ds.map(augment, num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def measure(dataset, *, batch_size: int, batches: int, warmup: int) -> tuple[float, float]:
    """(images per second, seconds until the warm-up batches were out)."""
    start = time.perf_counter()
    it = iter(dataset)
    for _ in range(warmup):  # tracing, thread-pool start-up and autotuning are not throughput
        next(it)
    ready = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - ready), ready - start


def _ratio(ours: list[float], theirs: list[float], digits: int) -> str:
    """"1.05x", or with several rounds the median of the per-round ratios and each of them."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    text = f"{statistics.median(ratios):.{digits}f}x"
    if len(ratios) > 1:
        text += f" (median of {len(ratios)} rounds: {', '.join(f'{r:.{digits}f}x' for r in ratios)})"
    return text


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=30, help="timed batches per configuration")
    p.add_argument("--baseline_batches", type=int, default=12,
                   help="timed batches of each Keras RandAugment baseline (a few images/s: fewer batches)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    p.add_argument("--rounds", type=int, default=1,
                   help="times every pipeline is built and timed, in turn; ratios are then the median of the rounds' "
                        "ratios (on a shared machine, load shifts between two back-to-back pipelines)")
    p.add_argument("--num_images", type=int, default=1024, help="synthetic images to generate")
    p.add_argument("--data_dir", default=None, help="benchmark on this dataset instead of synthetic images")
    p.add_argument("--augmenters", default="none,autoaugment,randaugment")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"comma-separated subset of {', '.join(BASELINES)}; empty: none")
    args = p.parse_args(argv)
    baselines = [b for b in args.baselines.split(",") if b]
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        p.error(f"--baselines: unknown {', '.join(unknown)} (choose from {', '.join(BASELINES)})")

    from input.build_tfrecords import build
    from input.config import AugmentConfig, DataConfig
    from input.pipeline import train_dataset
    from input.datasets import open_dataset

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            synthetic_imagenet_like(os.path.join(tmp, "images"), args.num_images)
            data_dir = os.path.join(tmp, "tfrecords")
            build(os.path.join(tmp, "images"), data_dir, num_shards=16, progress=False)
        cfg = DataConfig(data_dir=data_dir)
        info = open_dataset(cfg)
        print(f"data: {info.description}")
        print(f"cpu cores available: {cores}; image_size {args.image_size}; batch {args.batch_size}; "
              f"{args.batches} timed batches ({args.baseline_batches} for Keras baselines) after {args.warmup} "
              f"warm-up batches")
        print(f"{'pipeline':<28}{'images/s':>10}{'images/s/core':>15}{'warm-up s':>11}{'load 1 min':>12}")
        rates: dict[str, list[float]] = {}
        runs = [(name, args.batches) for name in args.augmenters.split(",") if name]
        runs += [(name, args.baseline_batches if name in KERAS_BASELINES else args.batches) for name in baselines]
        for name, batches in runs * args.rounds:
            load = os.getloadavg()[0]
            if name in BASELINES:
                ds = baseline_dataset(info, image_size=args.image_size, batch_size=args.batch_size,
                                      randaugment=name.rsplit("_", 1)[1] if name in KERAS_BASELINES else None)
            else:
                aug = AugmentConfig(augmenter_name=None if name == "none" else name)
                ds = train_dataset(info, cfg, aug, batch_size=args.batch_size, image_size=args.image_size, seed=0)
            rate, warm = measure(ds, batch_size=args.batch_size, batches=batches, warmup=args.warmup)
            rates.setdefault(name, []).append(rate)
            print(f"{name:<28}{rate:>10.1f}{rate / cores:>15.1f}{warm:>11.1f}{load:>12.2f}", flush=True)
        if "none" in rates and "decode_then_crop" in rates:
            print(f"ours (none) / decode_then_crop: {_ratio(rates['none'], rates['decode_then_crop'], 2)}")
        measured = [b for b in KERAS_BASELINES if b in rates]
        if "autoaugment" in rates and measured:
            best = max(measured, key=lambda b: statistics.median(rates[b]))
            print(f"ours (autoaugment) / {best}: {_ratio(rates['autoaugment'], rates[best], 1)} "
                  f"(goal >= 2x); load now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
