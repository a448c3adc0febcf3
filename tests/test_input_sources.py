"""Source resolution: TFRecord shards, image folders, TFDS prepared offline, the demo, bad --data_dir."""
import concurrent.futures
import io
import json
import os
import tarfile

import numpy as np
import pytest

import input as I
from input import demo, sources, testdata


def _labels_of(info, cfg, image_size=32):
    out = []
    for _, y, m in I.eval_dataset(info, cfg, batch_size=4, image_size=image_size):
        out += list(y.numpy()[m.numpy() > 0])
    return sorted(int(v) for v in out)


def test_foreign_tfrecords_one_based_counted_and_scanned(tmp_path):
    # No labels file and no count file: records are counted from headers and classes found by scanning.
    testdata.write_shards(str(tmp_path), "train", [[(testdata.encode(testdata.image_array(i)), 1 + i % 3)
                                                    for i in range(5)]] * 2, texts=True)
    testdata.write_shards(str(tmp_path), "validation", [[(testdata.encode(testdata.image_array(9)), 3),
                                                         (testdata.encode(testdata.image_array(8)), 1),
                                                         (testdata.encode(testdata.image_array(7)), 2)]], texts=True)
    cfg = I.DataConfig(data_dir=str(tmp_path))
    info = I.open_dataset(cfg)
    assert info.source == "tfrecord"
    assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (10, 3, 3)
    assert info.class_names == ("name1", "name2", "name3")
    assert "train-*: 2 files" in info.description
    assert _labels_of(info, cfg) == [0, 1, 2]


def test_zero_based_flag_and_explicit_num_classes(tmp_path):
    testdata.labelled_shards(str(tmp_path), "validation", [3], offset=0)
    cfg = I.DataConfig(data_dir=str(tmp_path), labels_zero_based=True, num_classes=5)
    info = I.open_dataset(cfg)
    assert info.num_classes == 5 and info.class_names == tuple("01234")
    assert _labels_of(info, cfg) == [0, 1, 2]


def test_count_tfrecords_matches_and_detects_truncation(tmp_path):
    (path,) = testdata.labelled_shards(str(tmp_path), "train", [7])
    assert sources.count_tfrecords(path) == 7
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-10])
    with pytest.raises(ValueError, match="truncated inside record 6"):
        sources.count_tfrecords(path)


def test_image_folder_jpeg_and_png(tmp_path):
    testdata.make_image_folder(str(tmp_path), num_classes=3, train_per_class=3, val_per_class=2)
    cfg = I.DataConfig(data_dir=str(tmp_path))
    info = I.open_dataset(cfg)
    assert info.source == "folder"
    assert info.class_names == ("class_0", "class_1", "class_2")
    assert (info.num_train_examples, info.num_eval_examples) == (9, 6)
    assert {os.path.splitext(s.path)[1] for s in info.train_shards} == {".jpg", ".png"}
    assert _labels_of(info, cfg) == [0, 0, 1, 1, 2, 2]
    x, y = next(iter(I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=4, image_size=32, seed=0)))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 3)
    assert np.all(y.numpy().sum(1) == 1)


def test_folder_validation_class_not_in_train(tmp_path):
    testdata.make_image_folder(str(tmp_path), num_classes=2, train_per_class=1, val_per_class=1)
    os.rename(tmp_path / "validation" / "class_1", tmp_path / "validation" / "zebra")
    with pytest.raises(ValueError, match="zebra"):
        I.open_dataset(I.DataConfig(data_dir=str(tmp_path)))


def test_missing_data_dir_names_dir_and_layouts(tmp_path):
    d = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError) as e:
        I.open_dataset(I.DataConfig(data_dir=d))
    msg = str(e.value)
    assert d in msg and "train-*" in msg and "train/<class>" in msg and "dataset_info.json" in msg


def test_empty_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is empty"):
        I.open_dataset(I.DataConfig(data_dir=str(tmp_path)))


def test_data_dir_without_matching_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        I.open_dataset(I.DataConfig(data_dir=str(tmp_path)))
    assert "holds no dataset in a known layout" in str(e.value) and "validation-*" in str(e.value)


def test_forced_source_with_wrong_layout(tmp_path):
    testdata.make_image_folder(str(tmp_path), num_classes=1, train_per_class=1, val_per_class=0)
    with pytest.raises(FileNotFoundError, match="train-\\* or validation-\\*"):
        I.open_dataset(I.DataConfig(data_dir=str(tmp_path), source="tfrecord"))


def test_config_validation_names_the_flag():
    with pytest.raises(ValueError, match="--resize_method"):
        I.Preprocessing(resize_method="nearest")
    with pytest.raises(ValueError, match="--data_source"):
        I.DataConfig(source="csv")
    with pytest.raises(ValueError, match="--augmenter_name"):
        I.AugmentConfig(augmenter_name="autoaug")
    with pytest.raises(ValueError, match="--mixup_alpha"):
        I.AugmentConfig(mixup_alpha=-1)


# ------------------------------------------------------------------------------------------------- TFDS
def _tar_add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tiny_imagenet_manual_dir(d):
    os.makedirs(d)
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w") as t:
        for k, syn in enumerate(["n01440764", "n01443537"]):  # classes 0 and 1 of imagenet2012
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as it:
                for i in range(3):
                    _tar_add(it, f"{syn}_{i}.JPEG", testdata.encode(testdata.image_array(10 * k + i)))
            _tar_add(t, syn + ".tar", inner.getvalue())
    with open(os.path.join(d, "ILSVRC2012_img_train.tar"), "wb") as f:
        f.write(outer.getvalue())
    with tarfile.open(os.path.join(d, "ILSVRC2012_img_val.tar"), "w") as t:
        for i in range(1, 5):
            _tar_add(t, f"ILSVRC2012_val_{i:08d}.JPEG", testdata.encode(testdata.image_array(100 + i)))


def test_tfds_imagenet_prepared_offline_from_manual_dir(tmp_path, capsys):
    manual = str(tmp_path / "manual")
    _tiny_imagenet_manual_dir(manual)
    cfg = I.DataConfig(data_dir=str(tmp_path / "tfds"), dataset="imagenet2012", manual_dir=manual)
    info = I.open_dataset(cfg)
    assert "preparing TFDS imagenet2012 offline" in capsys.readouterr().out
    assert info.source == "tfds" and info.num_classes == 1000
    assert (info.num_train_examples, info.num_eval_examples) == (6, 4)
    assert info.class_names[0] == "n01440764"
    # The first four validation labels of ILSVRC2012 (from TFDS's bundled list: n01751748, n09193705, ...).
    assert _labels_of(info, cfg) == sorted([65, 970, 230, 809])
    ys = []
    it = iter(I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=3, image_size=32, seed=1))
    for _ in range(4):
        ys += list(np.argmax(next(it)[1].numpy(), 1))
    assert set(ys) == {0, 1}
    # Second open: already prepared, detected from --data_dir alone (no --dataset, no --manual_dir).
    again = I.open_dataset(I.DataConfig(data_dir=str(tmp_path / "tfds")))
    assert again.num_train_examples == 6 and "preparing" not in capsys.readouterr().out


def test_tfds_not_prepared_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        I.open_dataset(I.DataConfig(data_dir=str(tmp_path), dataset="imagenet2012"))
    msg = str(e.value)
    assert "ILSVRC2012_img_train.tar" in msg and "--manual_dir" in msg and str(tmp_path) in msg
    with pytest.raises(FileNotFoundError, match="tfds build mnist"):
        I.open_dataset(I.DataConfig(data_dir=str(tmp_path), dataset="mnist"))


def test_tfds_manual_dir_missing_tars(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"):
        I.open_dataset(I.DataConfig(data_dir=str(tmp_path / "tfds"), dataset="imagenet2012",
                                    manual_dir=str(tmp_path / "manual")))


# ------------------------------------------------------------------------------------------------- demo
def test_demo_dataset_built_once_and_reused(tmp_path, capsys):
    cfg = I.DataConfig(demo_cache_dir=str(tmp_path))
    info = I.open_dataset(cfg)
    out = capsys.readouterr().out
    assert "Using the embedded demo dataset" in out
    assert info.source == "demo"
    assert info.num_train_examples + info.num_eval_examples == 1797
    assert info.class_names == tuple(str(i) for i in range(10))
    assert 340 <= info.num_eval_examples <= 380
    cache = os.path.join(str(tmp_path), "v2")
    stats = {f: os.stat(os.path.join(cache, f)).st_mtime_ns for f in os.listdir(cache)}
    with open(os.path.join(cache, "labels.txt")) as f:
        assert f.read().split() == [str(i) for i in range(10)]
    info2 = I.open_dataset(cfg)
    assert info2.num_train_examples == info.num_train_examples
    assert stats == {f: os.stat(os.path.join(cache, f)).st_mtime_ns for f in os.listdir(cache)}
    assert not [e for e in os.listdir(str(tmp_path)) if e.startswith(".building")]
    counts = np.bincount(_labels_of(info, cfg), minlength=10)
    assert counts.sum() == info.num_eval_examples and counts.min() > 20


def test_demo_half_written_cache_is_rebuilt(tmp_path):
    cache = tmp_path / "v2"
    cache.mkdir()
    (cache / "train-00000-of-00004").write_bytes(b"partial")
    info = I.open_dataset(I.DataConfig(demo_cache_dir=str(tmp_path)))
    assert info.num_train_examples + info.num_eval_examples == 1797
    with open(cache / "dataset_info.json") as f:
        assert json.load(f)["splits"]["train"] == info.num_train_examples


def test_demo_concurrent_builders_end_with_one_complete_cache(tmp_path):
    """Two builders at once, as two test workers or two train.py runs start them. Threads rather than
    processes: the builders meet only in the file system (a private temporary directory each, then a rename),
    so threads race the same way without two more interpreters loading TensorFlow."""
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        dirs = list(ex.map(demo.ensure_demo_tfrecords, [str(tmp_path)] * 2))
    assert dirs == [str(tmp_path / "v2")] * 2
    info = I.open_dataset(I.DataConfig(demo_cache_dir=str(tmp_path)))
    assert info.num_train_examples + info.num_eval_examples == 1797
    assert sorted(os.listdir(tmp_path)) == ["v2"]


def test_any_prepared_tfds_image_classification_set(tmp_path):
    import tensorflow_datasets as tfds


    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        """Feature names differ from imagenet2012's on purpose: they come from the supervised keys."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "picture": tfds.features.Image(shape=(None, None, 3)),
                    "kind": tfds.features.ClassLabel(names=["disc", "ring", "bar"]),
                }),
                supervised_keys=("picture", "kind"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 6), "test": self._generate_examples(100, 3)}

        def _generate_examples(self, start, n):
            for i in range(n):
                yield start + i, {"picture": testdata.image_array(start + i, 30, 34), "kind": i % 3}

    d = str(tmp_path / "tfds")
    TinyShapes(data_dir=d).download_and_prepare(file_format="tfrecord")
    info = I.open_dataset(I.DataConfig(data_dir=d))  # detected: the only prepared dataset in --data_dir
    assert info.source == "tfds" and info.image_key == "picture" and info.label_key == "kind"
    assert info.class_names == ("disc", "ring", "bar")
    assert (info.num_train_examples, info.num_eval_examples) == (6, 3)
    cfg = I.DataConfig(data_dir=d, dataset="tiny_shapes")
    assert _labels_of(I.open_dataset(cfg), cfg) == [0, 1, 2]
