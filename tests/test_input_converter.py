"""input.build_tfrecords: the command line, the written format, and resuming after an interruption."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import input as I
import preloaded
from input import build_tfrecords, testdata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(path):
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/format": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
            "image/class/text": tf.io.FixedLenFeature([], tf.string)}
    return [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(path)]


def test_cli_writes_imagenet_format_in_parallel(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    testdata.make_image_folder(str(images), num_classes=3, train_per_class=4, val_per_class=2)
    proc = preloaded.run(["-m", "input.build_tfrecords", f"--image_dir={images}", f"--output_dir={out}",
                          "--num_shards=4", "--num_validation_shards=2", "--num_workers=2"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 12 train and 6 validation images, 3 classes" in proc.stdout
    assert "build_tfrecords" in proc.stderr and "18/18" in proc.stderr  # the progress bar reached the end
    names = sorted(os.listdir(out))
    assert names == [".build_state.json", "dataset_info.json", "labels.txt",
                     "train-00000-of-00004", "train-00001-of-00004", "train-00002-of-00004", "train-00003-of-00004",
                     "validation-00000-of-00002", "validation-00001-of-00002"]
    assert (out / "labels.txt").read_text().split() == ["class_0", "class_1", "class_2"]
    meta = json.loads((out / "dataset_info.json").read_text())
    assert meta["splits"] == {"train": 12, "validation": 6} and sum(meta["shard_counts"].values()) == 18
    recs = [r for k in range(4) for r in _records(str(out / f"train-0000{k}-of-00004"))]
    assert len(recs) == 12
    labels = sorted(int(r["image/class/label"]) for r in recs)
    assert labels == [1] * 4 + [2] * 4 + [3] * 4  # 1-based, as ImageNet shards are
    assert {(int(r["image/class/label"]), r["image/class/text"].numpy().decode()) for r in recs} == {
        (1, "class_0"), (2, "class_1"), (3, "class_2")}
    assert {r["image/format"].numpy().decode() for r in recs} == {"JPEG", "PNG"}
    # The reader sees the same dataset, taking the counts from dataset_info.json.
    info = I.open_dataset(I.DataConfig(data_dir=str(out)))
    assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (12, 6, 3)
    assert info.class_names == ("class_0", "class_1", "class_2")


def test_cli_reports_bad_image_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "input.build_tfrecords", f"--image_dir={tmp_path}/none",
                           f"--output_dir={tmp_path}/out"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"--image_dir {tmp_path}/none does not exist" in proc.stderr


def test_resume_keeps_finished_shards(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    testdata.make_image_folder(str(images), num_classes=2, train_per_class=5, val_per_class=1)
    build_tfrecords.build(str(images), str(out), num_shards=3, num_workers=1, progress=False)
    before = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out) if p.startswith("train-")}
    # Simulate an interruption: one shard never finished (only its .tmp exists), and no count file yet.
    os.replace(out / "train-00001-of-00003", out / "train-00001-of-00003.tmp")
    os.remove(out / "dataset_info.json")
    info = build_tfrecords.build(str(images), str(out), num_shards=3, num_workers=1, progress=False)
    after = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out) if p.startswith("train-")}
    assert set(after) == set(before)
    assert after["train-00000-of-00003"] == before["train-00000-of-00003"]
    assert after["train-00002-of-00003"] == before["train-00002-of-00003"]
    assert info["splits"]["train"] == 10
    assert sum(1 for _ in tf.data.TFRecordDataset(str(out / "train-00001-of-00003"))) == \
        info["shard_counts"]["train-00001-of-00003"]
    # A different image set must not be silently mixed into the old shards.
    testdata.make_image_folder(str(images), num_classes=3, train_per_class=1, val_per_class=1)
    with pytest.raises(ValueError, match="partial conversion of different images"):
        build_tfrecords.build(str(images), str(out), num_shards=3, num_workers=1, progress=False)


def test_undecodable_source_image_named(tmp_path):
    testdata.make_image_folder(str(tmp_path / "images"), num_classes=1, train_per_class=2, val_per_class=0)
    bad = tmp_path / "images" / "train" / "class_0" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    with pytest.raises(ValueError, match="cannot decode image .*broken.jpg"):
        build_tfrecords.build(str(tmp_path / "images"), str(tmp_path / "out"), num_shards=1, num_workers=1,
                              progress=False)
