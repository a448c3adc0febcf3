"""Train/eval datasets: shapes, sharding across workers, per-epoch reshuffle, exactly-once evaluation,
corrupt records and out-of-range labels."""
import collections

import numpy as np
import pytest
import tensorflow as tf

import input as I
from input import pipeline, testdata


def ctx(n, w, replicas=None):
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=w,
                                      num_replicas_in_sync=replicas or n)


def open_dir(d, **kw):
    cfg = I.DataConfig(data_dir=str(d), **kw)
    return I.open_dataset(cfg), cfg


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """6 train shards (24 records) and 3 uneven validation shards (5+2+4), every record its own label; the
    tests only read them."""
    root = tmp_path_factory.mktemp("labelled")
    testdata.labelled_shards(str(root), "train", [4] * 6)
    testdata.labelled_shards(str(root), "validation", [5, 2, 4], start_label=24)
    return open_dir(root, num_classes=35)


def test_train_batches_shapes_ranges_onehot(labelled):
    info, cfg = labelled
    ds = I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=8, image_size=48, seed=0)
    assert ds.element_spec[0].shape.as_list() == [8, 48, 48, 3]
    assert ds.element_spec[1].shape.as_list() == [8, 35]
    for x, y in ds.take(5):  # 40 > 24 examples: the dataset repeats
        x, y = x.numpy(), y.numpy()
        assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255 and x.std() > 5
        assert np.all(y.sum(1) == 1) and set(np.unique(y)) == {0.0, 1.0}
        assert np.all(np.argmax(y, 1) < 24)


def test_train_seeded_is_reproducible(labelled):
    info, cfg = labelled
    def first_batches(seed):
        ds = I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=4, image_size=32, seed=seed)
        return [x.numpy() for x, _ in ds.take(3)]

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("workers", [1, 2])
def test_skipping_examples_continues_the_same_stream_at_any_batch_size(labelled, workers):
    """What a resume with another batch size relies on: a worker's example order and augmentation do not depend
    on the batch size, so skipping the examples already trained continues exactly where the stream stopped."""
    info, cfg = labelled
    aug = I.AugmentConfig(augmenter_name="randaugment")
    for w in range(workers):
        context = ctx(workers, w) if workers > 1 else None
        by_4 = list(I.train_dataset(info, cfg, aug, batch_size=4, image_size=32, seed=7, input_context=context)
                    .take(6).as_numpy_iterator())
        images = np.concatenate([x for x, _ in by_4])
        labels = np.concatenate([y for _, y in by_4]).argmax(1)
        (x, y), = I.train_dataset(info, cfg, aug, batch_size=8, image_size=32, seed=7, input_context=context,
                                  skip_examples=12).take(1).as_numpy_iterator()
        np.testing.assert_array_equal(y.argmax(1), labels[12:20])
        np.testing.assert_array_equal(x, images[12:20])
        assert not np.array_equal(y.argmax(1), labels[:8])  # the skip moved the stream


def _worker_labels(info, cfg, context, n):
    recs = I.train_records(info, cfg, image_size=32, input_context=context, seed=3)
    return [int(lab) for _, lab, _ in recs.take(n).as_numpy_iterator()]


def test_two_workers_read_disjoint_files_covering_all(labelled):
    info, cfg = labelled
    files = []
    for w in range(2):
        units, by_record = pipeline.train_units(info, ctx(2, w), seed=1)
        assert not by_record
        files.append({p.decode() for p, *_ in units.take(9).as_numpy_iterator()})  # 3 epochs of 3 files
    assert files[0].isdisjoint(files[1])
    assert files[0] | files[1] == {s.path for s in info.train_shards}
    seen = [set(_worker_labels(info, cfg, ctx(2, w), 36)) for w in range(2)]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(24))
    assert len(seen[0]) == len(seen[1]) == 12


def test_horovod_style_rank_size_context(labelled):
    info, _ = labelled
    files = [{p.decode() for p, *_ in pipeline.train_units(info, I.worker_input_context(r, 3), 0)[0]
              .take(2).as_numpy_iterator()} for r in range(3)]
    assert sum(len(f) for f in files) == 6 and len(set.union(*files)) == 6
    with pytest.raises(ValueError, match="rank 3 is outside"):
        I.worker_input_context(3, 3)


def test_fewer_files_than_workers_shards_records(tmp_path):
    testdata.labelled_shards(str(tmp_path), "train", [7])
    info, cfg = open_dir(tmp_path, num_classes=7)
    seen = [collections.Counter(_worker_labels(info, cfg, ctx(2, w), 12)) for w in range(2)]
    assert set(seen[0]) == {0, 2, 4, 6} and set(seen[1]) == {1, 3, 5}


def test_file_order_reshuffled_every_epoch(labelled):
    info, _ = labelled
    units, _ = pipeline.train_units(info, None, seed=7)
    order = [p.decode() for p, *_ in units.take(6 * 5).as_numpy_iterator()]
    epochs = [tuple(order[i:i + 6]) for i in range(0, 30, 6)]
    assert all(sorted(e) == sorted(s.path for s in info.train_shards) for e in epochs)
    assert len(set(epochs)) >= 4  # 720 permutations: five epochs in the same order would mean no reshuffle
    again, _ = pipeline.train_units(info, None, seed=7)
    assert [p.decode() for p, *_ in again.take(30).as_numpy_iterator()] == order


def _eval_run(info, cfg, batch, n, replicas=None):
    per_worker = []
    for w in range(n):
        batches = list(I.eval_dataset(info, cfg, batch_size=batch, image_size=32,
                                      input_context=ctx(n, w, replicas) if n > 1 or replicas else None))
        for x, y, m in batches:
            assert x.shape == (batch, 32, 32, 3) and y.dtype == tf.int32 and m.dtype == tf.float32
        labels = [int(v) for _, y, m in batches for v in y.numpy()[m.numpy() > 0]]
        per_worker.append((len(batches), labels, sum(float(m.numpy().sum()) for _, _, m in batches)))
    return per_worker


@pytest.mark.parametrize("n,batch", [(1, 4), (1, 11), (1, 64), (2, 2), (2, 3), (3, 1)])
def test_eval_visits_every_example_exactly_once(labelled, n, batch):
    info, cfg = labelled
    runs = _eval_run(info, cfg, batch, n)
    steps = I.eval_steps(info, batch * n, n)
    assert [r[0] for r in runs] == [steps] * n
    labels = [lab for r in runs for lab in r[1]]
    assert sorted(labels) == list(range(24, 35))
    assert sum(r[2] for r in runs) == 11
    if n > 1:  # files do not split evenly: 5 / 2+4 -> the padded step count still covers the larger worker
        assert steps * batch >= max(len(r[1]) for r in runs)


def test_eval_record_sharding_and_replicas_per_pipeline(tmp_path):
    testdata.labelled_shards(str(tmp_path), "validation", [7])
    info, cfg = open_dir(tmp_path, num_classes=7)
    runs = _eval_run(info, cfg, batch=2, n=2)
    assert [r[0] for r in runs] == [2, 2] and sorted(runs[0][1] + runs[1][1]) == list(range(7))
    # One pipeline feeding two replicas: the pipeline yields one batch per replica per step.
    (single,) = _eval_run(info, cfg, batch=2, n=1, replicas=2)
    assert single[0] == 2 * I.eval_steps(info, 4, 1) and sorted(single[1]) == list(range(7))


def test_eval_is_deterministic(labelled):
    info, cfg = labelled
    a = [y.numpy().tolist() for _, y, _ in I.eval_dataset(info, cfg, batch_size=3, image_size=32)]
    b = [y.numpy().tolist() for _, y, _ in I.eval_dataset(info, cfg, batch_size=3, image_size=32)]
    assert a == b


# -------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def corrupt(tmp_path):
    good = [(testdata.encode(testdata.image_array(i)), 1 + i % 2) for i in range(4)]
    jpeg = testdata.encode(testdata.image_array(9))
    bad = list(good)
    bad[2] = (jpeg[: len(jpeg) // 3], 1)  # truncated JPEG: the header parses, the pixels do not
    worse = list(good)
    worse[3] = (b"this is not an image", 2)
    testdata.write_shards(str(tmp_path), "validation", [good, bad, worse])
    testdata.write_shards(str(tmp_path), "train", [good, bad])
    return tmp_path


def test_corrupt_record_stops_eval_naming_shard_and_index(corrupt):
    info, cfg = open_dir(corrupt, num_classes=2)
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        list(I.eval_dataset(info, cfg, batch_size=4, image_size=32))
    msg = str(e.value)
    assert "Undecodable image (or a record without image/encoded / image/class/label) in shard" in msg
    assert "--skip_corrupt" in msg
    assert "validation-00001-of-00003] [record index] [2]" in msg or \
        "validation-00002-of-00003] [record index] [3]" in msg


def test_corrupt_record_stops_training_naming_shard(corrupt):
    info, cfg = open_dir(corrupt, num_classes=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"train-00001-of-00002\] \[record index\] \[2\]"):
        for _ in I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=2, image_size=32, seed=0).take(8):
            pass


def test_skip_corrupt_skips_counts_and_logs(corrupt, capfd):
    info, cfg = open_dir(corrupt, num_classes=2, skip_corrupt=True)
    masks = [float(m.numpy().sum()) for _, _, m in I.eval_dataset(info, cfg, batch_size=4, image_size=32)]
    assert sum(masks) == 12 - 2 and len(masks) == I.eval_steps(info, 4)
    err = capfd.readouterr().err
    assert "skipped 1 corrupt record(s) in" in err and "validation-00001-of-00003" in err
    assert "total skipped: 2" in err
    batches = list(I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=7, image_size=32, seed=0).take(3))
    assert len(batches) == 3 and 'train-00001-of-00002" - total skipped:' in capfd.readouterr().err


def test_label_out_of_range_names_shard(tmp_path):
    recs = [(testdata.encode(testdata.image_array(i)), 1) for i in range(3)]
    testdata.write_shards(str(tmp_path), "validation", [recs, recs[:2] + [(recs[0][0], 9)]])
    info, cfg = open_dir(tmp_path, num_classes=3)
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        list(I.eval_dataset(info, cfg, batch_size=2, image_size=32))
    msg = str(e.value)
    assert "Label out of range [0, 3) in shard" in msg and "validation-00001-of-00002" in msg
    assert "[record index] [2] [label (0-based)] [8]" in msg


def test_zero_label_in_one_based_shards_is_caught(tmp_path):
    recs = [(testdata.encode(testdata.image_array(i)), i) for i in range(3)]  # 0-based by mistake
    testdata.write_shards(str(tmp_path), "train", [recs])
    info, cfg = open_dir(tmp_path, num_classes=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="--labels_zero_based"):
        next(iter(I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=2, image_size=32, seed=0)))
    info0, cfg0 = open_dir(tmp_path, num_classes=3, labels_zero_based=True)
    next(iter(I.train_dataset(info0, cfg0, I.AugmentConfig(), batch_size=2, image_size=32, seed=0)))


def test_no_validation_data_is_a_clear_error(tmp_path):
    testdata.labelled_shards(str(tmp_path), "train", [2])
    info, cfg = open_dir(tmp_path, num_classes=2)
    with pytest.raises(ValueError, match="no evaluation data in tfrecord shards in"):
        I.eval_dataset(info, cfg, batch_size=2, image_size=32)


def test_corrupt_image_file_in_folder_is_named(tmp_path):
    testdata.make_image_folder(str(tmp_path), num_classes=2, train_per_class=2, val_per_class=2)
    bad = tmp_path / "validation" / "class_1" / "img_009.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    info, cfg = open_dir(tmp_path)
    assert info.num_eval_examples == 5
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class_1/img_009.jpg\] \[record index\] \[0\]"):
        list(I.eval_dataset(info, cfg, batch_size=2, image_size=32))
    info, cfg = open_dir(tmp_path, skip_corrupt=True)
    assert sum(float(m.numpy().sum()) for _, _, m in I.eval_dataset(info, cfg, batch_size=2, image_size=32)) == 4
