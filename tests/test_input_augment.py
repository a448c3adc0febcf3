"""AutoAugment v0, RandAugment and their operations; mixup/cutmix label arithmetic."""
import numpy as np
import pytest
import tensorflow as tf

import input as I
from input import augment as A
from input import mixing, testdata

SEED = tf.constant([4, 2], tf.int64)


def _img(h=32, w=32):
    return tf.constant(testdata.image_array(3, h, w).astype("float32"))


def test_pixel_ops_exact_values():
    img = tf.constant([[[0.0, 100.0, 200.0], [250.0, 130.0, 10.0]]])
    assert A.apply_op(img, "Invert", 5, SEED).numpy().tolist() == [[[255, 155, 55], [5, 125, 245]]]
    # Solarize level 5 -> threshold 128: values >= 128 are inverted.
    assert A.apply_op(img, "Solarize", 5, SEED).numpy().tolist() == [[[0, 100, 55], [5, 125, 10]]]
    # Posterize level 10 -> 4 bits kept.
    assert A.apply_op(img, "Posterize", 10, SEED).numpy().tolist() == [[[0, 96, 192], [240, 128, 0]]]
    # SolarizeAdd level 10 -> +110 below 128, clipped.
    assert A.apply_op(img, "SolarizeAdd", 10, SEED).numpy().tolist() == [[[110, 210, 200], [250, 130, 120]]]
    # Brightness level 0 -> factor 0.1 of the image.
    np.testing.assert_allclose(A.apply_op(img, "Brightness", 0, SEED).numpy(), img.numpy() * 0.1, rtol=1e-6)
    # AutoContrast stretches each channel to [0, 255].
    out = A.apply_op(tf.constant([[[10.0, 10.0, 10.0], [20.0, 30.0, 10.0]]]), "AutoContrast", 0, SEED).numpy()
    assert out.tolist() == [[[0, 0, 10], [255, 255, 10]]]


def test_equalize_spreads_histogram():
    img = tf.constant(np.tile(np.array([50.0, 60.0] * 512).reshape(32, 32, 1), [1, 1, 3]), tf.float32)
    out = A.apply_op(img, "Equalize", 0, SEED).numpy()
    assert sorted(np.unique(out).tolist()) == [0.0, 255.0]
    # Like PIL: with too few pixels for a step of >= 1 the channel is left alone.
    tiny = img[:4, :4]
    assert np.array_equal(A.apply_op(tiny, "Equalize", 0, SEED).numpy(), tiny.numpy())


def test_geometric_ops():
    img = _img()
    assert np.allclose(A.apply_op(img, "Rotate", 0, SEED).numpy(), img.numpy())
    # TranslateX at level 10 (RandAugment: 100/224 of the width): 14 px at 32 px, filled with grey 128.
    out = A.apply_op(img, "TranslateX", 10, SEED, A.RANDAUGMENT_OPS).numpy()
    col_fill = np.all(out == 128.0, axis=(0, 2))
    assert col_fill.sum() == 14 and (col_fill[:14].all() or col_fill[-14:].all())
    cut = A.apply_op(img, "Cutout", 10, SEED, A.RANDAUGMENT_OPS).numpy()
    assert 0 < np.all(cut == 128.0, axis=2).sum() <= (2 * 5) ** 2
    for name in ("ShearX", "ShearY", "Rotate"):
        out = A.apply_op(img, name, 9, SEED).numpy()
        assert out.shape == (32, 32, 3) and np.abs(out - img.numpy()).mean() > 5


def _fill_lines(out, axis):
    """Rows (axis 1) or columns (axis 0) that are nothing but the fill value."""
    return int(np.all(out == A.FILL_VALUE, axis=(axis, 2)).sum())


@pytest.mark.parametrize("size", [224, 380])
def test_b4_recipe_translations_keep_part_of_every_image_and_never_exceed_the_reference(size):
    """B4 trains with AutoAugment v0 at 380 px; its translations are the reference's absolute pixels there
    (TranslateY level 9: 225 px), never the 382 px an image-relative scaling gave, and at 224 px they stop
    at MAX_SHIFT of the image instead of the reference's 225 px that would leave only fill."""
    img = _img(size, size).numpy()
    translations = sorted({(op, level) for sub in A.POLICY_V0 for op, _, level in sub if op.startswith("Translate")}
                          | {("TranslateX", 10), ("TranslateY", 10)})  # the policy's, and the strongest level
    assert ("TranslateY", 9) in translations
    for name, level in translations:
        reference = level / A.MAX_LEVEL * 250.0
        axis = 1 if name == "TranslateY" else 0
        shifts = set()
        for s in range(8):  # both directions
            seed = tf.constant([s, 5], tf.int64)
            for before in (img, A.apply_op(img, "Rotate", 7, seed).numpy()):  # alone and after the sub-policy's Rotate
                out = A.apply_op(before, name, level, seed).numpy()
                assert out.max() > out.min(), (name, level, size)  # not a constant image
                filled = _fill_lines(out, axis)
                assert filled <= reference and size - filled >= (1 - A.MAX_SHIFT) * size - 1, (name, level, filled)
                if before is img:
                    shifts.add(filled)
                    side = np.all(out == A.FILL_VALUE, axis=(axis, 2))
                    assert side[:filled].all() or side[size - filled:].all()
        expected = round(min(reference, A.MAX_SHIFT * size)) if size < 250 / A.MAX_SHIFT else round(reference)
        assert shifts == {expected}, (name, level, shifts)
    if size == 380:  # the reference's pixels, not scaled up with the image
        assert expected == 250
    # RandAugment's constants (translate 100, cutout 40 px) fit both sizes as they are.
    out = A.apply_op(img, "TranslateX", 10, SEED, A.RANDAUGMENT_OPS).numpy()
    assert _fill_lines(out, 0) == 100
    cut = A.apply_op(img, "Cutout", 10, SEED, A.RANDAUGMENT_OPS).numpy()
    assert 0 < np.all(cut == A.FILL_VALUE, axis=2).sum() <= 80 ** 2


@pytest.mark.parametrize("name", A.RANDAUGMENT_NAMES)
def test_every_op_keeps_shape_and_range_in_graph(name):
    f = tf.function(lambda x, s: A.apply_op(x, name, 10, s))
    out = f(_img(24, 40), SEED).numpy()
    assert out.shape == (24, 40, 3) and out.min() >= 0 and out.max() <= 255


def test_policy_table_is_v0():
    assert len(A.POLICY_V0) == 25 and all(len(sub) == 2 for sub in A.POLICY_V0)
    assert A.POLICY_V0[0] == (("Equalize", 0.8, 1), ("ShearY", 0.8, 4))
    assert {op for sub in A.POLICY_V0 for op, _, _ in sub} <= set(A.AUTOAUGMENT_OPS)


def test_randaugment_changes_images_and_is_seeded():
    img = _img()
    outs = [A.randaugment(img, tf.constant([i, 0], tf.int64), 2, 10.0).numpy() for i in range(6)]
    assert sum(np.abs(o - img.numpy()).mean() > 1 for o in outs) >= 4
    assert np.array_equal(A.randaugment(img, SEED, 2, 10.0).numpy(), A.randaugment(img, SEED, 2, 10.0).numpy())
    assert np.array_equal(A.randaugment(img, SEED, 0, 10.0).numpy(), img.numpy())


@pytest.fixture(scope="module")
def twelve_records(tmp_path_factory):
    """12 labelled records and the first 4 batches the train pipeline makes of them without a policy."""
    root = str(tmp_path_factory.mktemp("twelve"))
    testdata.labelled_shards(root, "train", [6, 6], size=(48, 48))
    cfg = I.DataConfig(data_dir=root, num_classes=12)
    info = I.open_dataset(cfg)
    plain = I.train_dataset(info, cfg, I.AugmentConfig(), batch_size=6, image_size=32, seed=11)
    return info, cfg, list(plain.take(4).as_numpy_iterator())


@pytest.mark.parametrize("name", ["autoaugment", "randaugment"])
def test_augmenter_in_train_pipeline(twelve_records, name):
    info, cfg, plain = twelve_records
    aug = I.train_dataset(info, cfg, I.AugmentConfig(augmenter_name=name, raug_magnitude=9), batch_size=6,
                          image_size=32, seed=11)
    diffs = []
    for (x0, y0), (x1, y1) in zip(plain, aug.take(4).as_numpy_iterator()):
        assert np.array_equal(y0, y1)  # same records, same crops: only the policy differs
        assert x1.shape == (6, 32, 32, 3) and x1.min() >= 0 and x1.max() <= 255
        diffs += list(np.abs(x1 - x0).mean(axis=(1, 2, 3)))
    assert sum(d > 1 for d in diffs) >= 8  # most images were changed by the policy


# ------------------------------------------------------------------------------------------------ mixing
def _batch(n=8, size=16, classes=5):
    # Image k is constant k+1, so every output pixel tells which image(s) it came from.
    images = tf.constant(np.stack([np.full((size, size, 3), k + 1.0, np.float32) for k in range(n)]))
    labels = tf.one_hot(np.arange(n) % classes, classes)
    return images, labels


def test_cutmix_labels_follow_pasted_area():
    images, labels = _batch()
    for s in range(20):
        x, y = mixing.cutmix(images, labels, 1.0, tf.constant([s, 1], tf.int64))
        x, y = x.numpy(), y.numpy()
        for k in range(8):
            partner = 7 - k
            area = np.mean(x[k, :, :, 0] == partner + 1)
            expected = np.zeros(5)
            expected[k % 5] += 1 - area
            expected[partner % 5] += area
            np.testing.assert_allclose(y[k], expected, atol=1e-6)


def test_mixup_labels_follow_pixel_weights():
    images, labels = _batch()
    x, y = mixing.mixup(images, labels, 0.4, SEED)
    lam = (x.numpy()[0, 0, 0, 0] - 8.0) / (1.0 - 8.0)  # image 0 (value 1) mixed with image 7 (value 8)
    assert 0 <= lam <= 1
    np.testing.assert_allclose(y.numpy()[0], lam * np.eye(5)[0] + (1 - lam) * np.eye(5)[2], atol=1e-5)


def test_mix_batch_both_alphas_label_rows_sum_to_one():
    images, labels = _batch()
    smoothed = labels * 0.9 + 0.1 / 5
    kinds = set()
    for s in range(40):
        x, y = I.mix_batch(images, smoothed, mixup_alpha=0.2, cutmix_alpha=1.0, seed=tf.constant([s, 3], tf.int64))
        np.testing.assert_allclose(y.numpy().sum(1), 1.0, atol=1e-5)
        distinct = np.unique(x.numpy()[0])
        kinds.add("cutmix" if set(distinct) <= {1.0, 8.0} else "mixup")
    assert kinds == {"cutmix", "mixup"}  # both are chosen, per batch


def test_mix_batch_inside_tf_function_unseeded():
    images, labels = _batch()

    @tf.function
    def step(x, y):
        return I.mix_batch(x, y, mixup_alpha=0.2, cutmix_alpha=1.0)

    for _ in range(5):
        _, y = step(images, labels)
        np.testing.assert_allclose(y.numpy().sum(1), 1.0, atol=1e-5)
    x, y = I.mix_batch(images, labels, mixup_alpha=0.0, cutmix_alpha=0.0)
    assert np.array_equal(y.numpy(), labels.numpy())
    for _ in range(4):  # half-precision images (mixed precision): labels stay float32 and exact
        x16, y = step(tf.cast(images, tf.float16), labels)
        assert x16.dtype == tf.float16 and y.dtype == tf.float32
        np.testing.assert_allclose(y.numpy().sum(1), 1.0, atol=1e-6)


def test_pipeline_mixing_and_deferral(tmp_path):
    testdata.labelled_shards(str(tmp_path), "train", [8], size=(32, 32))
    cfg = I.DataConfig(data_dir=str(tmp_path), num_classes=8)
    info = I.open_dataset(cfg)
    aug = I.AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0)
    for x, y in I.train_dataset(info, cfg, aug, batch_size=4, image_size=32, seed=2).take(4):
        np.testing.assert_allclose(y.numpy().sum(1), 1.0, atol=1e-5)
        assert (y.numpy() > 0).sum(1).max() == 2
    deferred = I.AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0, defer_img_mixing=True)
    for _, y in I.train_dataset(info, cfg, deferred, batch_size=4, image_size=32, seed=2).take(2):
        assert set(np.unique(y.numpy())) == {0.0, 1.0}
