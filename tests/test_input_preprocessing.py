"""Decode, crop and resize of single images (train and eval paths, JPEG and other formats)."""
import io

import numpy as np
import tensorflow as tf
from PIL import Image

import input as I
from input import preprocessing, testdata


def _bytes(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return tf.constant(buf.getvalue())


def test_eval_centre_crop_geometry_exact():
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[16:48, 32:64] = 200  # exactly the centre crop at 32 px: 32/(32+32) of the 64 px short side
    out = I.preprocess_for_eval(_bytes(arr, "PNG"), 32).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert np.all(out == 200.0)
    wider = I.preprocess_for_eval(_bytes(arr, "PNG"), 32, crop_fraction=1.0).numpy()
    assert 0 < (wider == 200).mean() < 1


def test_formats_decode_to_three_channels():
    arr = testdata.image_array(1, 50, 60)
    jpeg = I.preprocess_for_eval(_bytes(arr, "JPEG"), 40).numpy()
    for fmt in ("PNG", "BMP", "GIF"):
        other = I.preprocess_for_eval(_bytes(arr if fmt != "GIF" else arr[..., :1].repeat(3, 2), fmt), 40).numpy()
        assert other.shape == (40, 40, 3)
    png = I.preprocess_for_eval(_bytes(arr, "PNG"), 40).numpy()
    assert np.abs(png - jpeg).mean() < 6  # same picture, JPEG loss only
    gray = I.preprocess_for_eval(_bytes(arr[..., 0], "PNG"), 40).numpy()
    assert np.array_equal(gray[..., 0], gray[..., 2])


def test_bicubic_stays_in_range():
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[::2] = 255  # stripes make bicubic overshoot before clipping
    out = I.preprocess_for_eval(_bytes(arr, "PNG"), 56, "bicubic").numpy()
    assert out.min() >= 0 and out.max() <= 255


def test_random_crop_windows_respect_area_and_fallback():
    arr = testdata.image_array(2, 80, 80)
    data = _bytes(arr, "JPEG")
    shapes = set()
    for s in range(40):
        crop = preprocessing.decode_and_random_crop(data, 32, tf.constant([s, 0], tf.int64))
        h, w = crop.shape[:2]
        assert 0.05 * 6400 * 0.9 <= h * w <= 6400 and 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
        shapes.add((h, w))
    assert len(shapes) > 20
    # No window with aspect in [3/4, 4/3] covers >= 5% of a 400x4 strip: the centre crop is used instead.
    strip = _bytes(np.full((4, 400, 3), 90, np.uint8), "PNG")
    crop = preprocessing.decode_and_random_crop(strip, 32, tf.constant([1, 2], tf.int64))
    assert crop.shape[:2] == (2, 2)  # int(32 / 64 * 4) square


def test_train_preprocess_png_and_jpeg_same_path_shape():
    arr = testdata.image_array(3, 60, 45)
    for fmt in ("JPEG", "PNG"):
        out = I.preprocess_for_train(_bytes(arr, fmt), 48, tf.constant([5, 5], tf.int64), "bilinear").numpy()
        assert out.shape == (48, 48, 3) and out.min() >= 0 and out.max() <= 255 and out.std() > 3
