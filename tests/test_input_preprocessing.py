"""Decode, crop and resize of single images (train and eval paths, JPEG and other formats), and what each
preprocessing setting does to the pixels."""
import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import input as I
from input import preprocessing, testdata
from input.config import REFERENCE


def _bytes(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return tf.constant(buf.getvalue())


def _eval(**overrides):
    return REFERENCE.with_eval_overrides(I.EvalPreprocessing(**overrides))


def _train(**changes):
    return dataclasses.replace(REFERENCE, **changes)


def _ramps(size=96):
    """Red rises left to right, green top to bottom: a crop's extent shows in the channels' ranges."""
    ramp = np.linspace(0, 255, size)
    arr = np.zeros((size, size, 3), np.uint8)
    arr[..., 0] = ramp[None, :]
    arr[..., 1] = ramp[:, None]
    return _bytes(arr, "PNG")


def _seed(k):
    return tf.constant([k, 3], tf.int64)


def test_eval_centre_crop_geometry_exact():
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[16:48, 32:64] = 200  # exactly the centre crop at 32 px: 32/(32+32) of the 64 px short side
    out = I.preprocess_for_eval(_bytes(arr, "PNG"), 32).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert np.all(out == 200.0)
    wider = I.preprocess_for_eval(_bytes(arr, "PNG"), 32, _eval(eval_crop_fraction=1.0)).numpy()
    assert 0 < (wider == 200).mean() < 1


def test_crop_padding_and_eval_crop_fraction_choose_the_eval_crop():
    arr = testdata.image_array(4, 64, 64)
    data = _bytes(arr, "PNG")
    reference = I.preprocess_for_eval(data, 32).numpy()  # padding 32: half the side
    assert np.array_equal(I.preprocess_for_eval(data, 32, _eval(eval_crop_fraction=0.5)).numpy(), reference)
    whole = I.preprocess_for_eval(data, 32, _eval(crop_padding=0)).numpy()
    assert np.abs(whole - reference).mean() > 5
    resized = tf.clip_by_value(tf.image.resize(arr, [32, 32]), 0, 255).numpy()
    np.testing.assert_allclose(whole, resized, atol=1e-3)  # padding 0 on a square image: all of it
    padded_96 = I.preprocess_for_eval(data, 32, _eval(crop_padding=96)).numpy()  # a quarter of the side
    centre = tf.image.resize(arr[24:40, 24:40], [32, 32]).numpy()
    np.testing.assert_allclose(padded_96, centre, atol=1e-3)


def test_resize_method_changes_the_pixels_and_bicubic_stays_in_range():
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[::2] = 255  # stripes make bicubic overshoot before clipping
    bicubic = I.preprocess_for_eval(_bytes(arr, "PNG"), 56, _eval(resize_method="bicubic")).numpy()
    bilinear = I.preprocess_for_eval(_bytes(arr, "PNG"), 56).numpy()
    assert bicubic.min() >= 0 and bicubic.max() <= 255
    assert np.abs(bicubic - bilinear).mean() > 1


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


def test_random_crop_windows_respect_area_and_fallback():
    arr = testdata.image_array(2, 80, 80)
    data = _bytes(arr, "JPEG")
    shapes = set()
    for s in range(40):
        crop = preprocessing.decode_and_random_crop(data, _seed(s), (0.05, 1.0), (3 / 4, 4 / 3), 0.5)
        h, w = crop.shape[:2]
        assert 0.05 * 6400 * 0.9 <= h * w <= 6400 and 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
        shapes.add((h, w))
    assert len(shapes) > 20
    # No window with aspect in [3/4, 4/3] covers >= 5% of a 400x4 strip: the centre crop is used instead.
    strip = _bytes(np.full((4, 400, 3), 90, np.uint8), "PNG")
    crop = preprocessing.decode_and_random_crop(strip, _seed(1), (0.05, 1.0), (3 / 4, 4 / 3), 0.5)
    assert crop.shape[:2] == (2, 2)  # half of the 4 px side, square


def _channel_ranges(data, prep, seeds=range(12)):
    """(red range, green range) of each seed's training output: the crop's width and height in ramp units."""
    outs = [I.preprocess_for_train(data, 32, _seed(s), prep).numpy() for s in seeds]
    return np.array([[o[..., 0].max() - o[..., 0].min(), o[..., 1].max() - o[..., 1].min()] for o in outs])


def test_crop_area_range_sets_how_much_of_the_image_training_sees():
    data = _ramps()
    big = _channel_ranges(data, _train(crop_area_range=(0.9, 1.0), random_flip=False))
    # Windows must also hold 10% of the image (min_object_covered), so 10-12% is the smallest useful range.
    small = _channel_ranges(data, _train(crop_area_range=(0.1, 0.12), random_flip=False))
    assert big.min() > 200  # a 90-100% crop spans most of both ramps
    assert small.max() < 115  # a 10-12% crop spans at most 0.4 of a side at aspect 4/3 (the fallback: 0.5)


def test_crop_aspect_range_sets_the_crop_shape():
    data = _ramps()
    wide = _channel_ranges(data, _train(crop_area_range=(0.2, 0.3), crop_aspect_range=(2.0, 2.0), random_flip=False))
    tall = _channel_ranges(data, _train(crop_area_range=(0.2, 0.3), crop_aspect_range=(0.5, 0.5), random_flip=False))
    assert np.all(wide[:, 0] > 1.5 * wide[:, 1]) and np.all(tall[:, 1] > 1.5 * tall[:, 0])


def test_without_random_crop_training_sees_the_eval_crop_and_flip_mirrors_it():
    data = _bytes(testdata.image_array(5, 48, 64), "PNG")
    prep = _train(random_crop=False, crop_padding=0, random_flip=False)
    eval_pixels = I.preprocess_for_eval(data, 32, prep).numpy()
    for s in range(4):
        assert np.array_equal(I.preprocess_for_train(data, 32, _seed(s), prep).numpy(), eval_pixels)
    flipped = [I.preprocess_for_train(data, 32, _seed(s), _train(random_crop=False, crop_padding=0)).numpy()
               for s in range(16)]
    mirrored = [np.array_equal(f, eval_pixels[:, ::-1]) for f in flipped]
    unchanged = [np.array_equal(f, eval_pixels) for f in flipped]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)


def test_random_crop_varies_with_the_seed():
    data = _bytes(testdata.image_array(6, 64, 64), "JPEG")
    outs = [I.preprocess_for_train(data, 32, _seed(s), _train(random_flip=False)).numpy() for s in range(4)]
    assert len({o.tobytes() for o in outs}) == 4


def test_train_preprocess_png_and_jpeg_same_path_shape():
    arr = testdata.image_array(3, 60, 45)
    for fmt in ("JPEG", "PNG"):
        out = I.preprocess_for_train(_bytes(arr, fmt), 48, _seed(5)).numpy()
        assert out.shape == (48, 48, 3) and out.min() >= 0 and out.max() <= 255 and out.std() > 3


def test_undecided_settings_are_refused_by_the_pipeline():
    with pytest.raises(ValueError, match="not decided"):
        I.preprocess_for_train(_ramps(), 32, _seed(0), I.Preprocessing())
