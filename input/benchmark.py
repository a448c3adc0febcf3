"""Input pipeline throughput: decode + crop + flip + resize + augment + batch, in images/second.

    python -m input.benchmark [--image_size 224] [--batch_size 64] [--batches 30] [--data_dir DIR]

Without --data_dir it writes synthetic ImageNet-like JPEGs (500x375, photo-sized files) through the converter
into a temporary directory first. Nothing is fed to a model: this is the rate the CPU can supply.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time


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


def measure(info, cfg, aug, *, image_size: int, batch_size: int, batches: int, warmup: int) -> float:
    from input.pipeline import train_dataset

    it = iter(train_dataset(info, cfg, aug, batch_size=batch_size, image_size=image_size, seed=0))
    for _ in range(warmup):  # tracing, thread-pool start-up and autotuning are not throughput
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=30, help="timed batches per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    p.add_argument("--num_images", type=int, default=1024, help="synthetic images to generate")
    p.add_argument("--data_dir", default=None, help="benchmark on this dataset instead of synthetic images")
    p.add_argument("--augmenters", default="none,autoaugment,randaugment")
    args = p.parse_args(argv)

    from input.build_tfrecords import build
    from input.config import AugmentConfig, DataConfig
    from input.sources import open_dataset

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
              f"{args.batches} timed batches after {args.warmup} warm-up batches")
        print(f"{'augmenter':<14}{'images/s':>10}{'images/s/core':>15}")
        for name in args.augmenters.split(","):
            aug = AugmentConfig(augmenter_name=None if name == "none" else name)
            rate = measure(info, cfg, aug, image_size=args.image_size, batch_size=args.batch_size,
                           batches=args.batches, warmup=args.warmup)
            print(f"{name:<14}{rate:>10.1f}{rate / cores:>15.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
