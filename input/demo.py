"""The embedded demo dataset: the UCI handwritten digits (input/data/digits.csv.gz, scikit-learn's copy of them),
cached as ImageNet-format TFRecords.

It goes through the same converter and reader as user data, so a run without --data_dir exercises the
real input path end to end.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np

from input import build_tfrecords
from input.config import DataConfig
from input.sources import INFO_FILE, open_tfrecord_dir

DEMO_SIZE = 32
DIGIT_SIZE = 24  # the digit is centred on a black border, so crops rarely cut strokes off
DEMO_VERSION = "v2"  # bump when the cached files change meaning, so old caches are not reused
# The 1,797 8x8 digits, one per line: 64 pixel counts in 0..16, then the label. The file is scikit-learn's
# (sklearn/datasets/data/digits.csv.gz, BSD-3-Clause; the data: UCI, CC BY 4.0), kept here so the core install
# needs no scikit-learn: Keras imports it, when installed, in every process that imports TensorFlow.
DIGITS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.csv.gz")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float64 in 0..16, labels [1797] int), as scikit-learn's load_digits reads the file."""
    table = np.loadtxt(DIGITS_CSV, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "efficientnet_tf2", "demo")


def _write_image_folder(root: str) -> None:
    from PIL import Image

    images, labels = load_digits()
    rng = np.random.RandomState(0)
    order = rng.permutation(len(labels))
    n_val = len(order) // 5
    for k, idx in enumerate(order):
        split = "validation" if k < n_val else "train"
        img8 = (images[idx] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
        # Bilinear upsampling keeps strokes smooth and legible; the digit stays white on black.
        digit = Image.fromarray(img8, mode="L").resize((DIGIT_SIZE, DIGIT_SIZE), Image.BILINEAR)
        img = Image.new("L", (DEMO_SIZE, DEMO_SIZE))
        img.paste(digit, ((DEMO_SIZE - DIGIT_SIZE) // 2, (DEMO_SIZE - DIGIT_SIZE) // 2))
        img = img.convert("RGB")
        d = os.path.join(root, split, str(int(labels[idx])))
        os.makedirs(d, exist_ok=True)
        img.save(os.path.join(d, f"digit_{int(idx):04d}.jpg"), quality=95)


def ensure_demo_tfrecords(cache_dir: str | None = None) -> str:
    """Returns a directory of complete demo shards, building it on first use."""
    base = cache_dir or default_cache_dir()
    final = os.path.join(base, DEMO_VERSION)
    # The info file is written last by the converter and the directory is renamed into place only after it,
    # so a directory without it (an older crash, a concurrent half-build) is never taken as complete.
    if os.path.exists(os.path.join(final, INFO_FILE)):
        return final
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".building-", dir=base)
    try:
        _write_image_folder(os.path.join(work, "images"))
        out = os.path.join(work, "tfrecords")
        build_tfrecords.build(os.path.join(work, "images"), out, num_shards=4, num_validation_shards=2,
                              num_workers=1, progress=False)
        complete = os.path.join(final, INFO_FILE)
        if os.path.exists(final) and not os.path.exists(complete):  # leftover of an interrupted build
            shutil.rmtree(final, ignore_errors=True)
        if not os.path.exists(complete):  # else another process finished first: keep its cache, drop ours
            try:
                os.replace(out, final)
            except OSError:
                if not os.path.exists(complete):
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def open_demo(cfg: DataConfig):
    d = ensure_demo_tfrecords(cfg.demo_cache_dir)
    info = open_tfrecord_dir(d)
    print(f"Using the embedded demo dataset (UCI handwritten digits: {info.num_train_examples} train / "
          f"{info.num_eval_examples} validation images, {info.num_classes} classes, {DEMO_SIZE} px, cached as "
          f"TFRecords in {d}); pass --data_dir to train on your own data.", flush=True)
    return dataclasses.replace(info, source="demo", description="embedded demo dataset (digits) as " + info.description)
