"""Per-image decode, crop and resize, all graph ops (no Python per image).

JPEG bytes take the fused decode-and-crop path: the crop window is decided from the header alone, so only
the pixels inside it are decoded. Other formats (PNG, BMP, GIF) are fully decoded, then cropped the same way.
"""
from __future__ import annotations

import tensorflow as tf

from input.config import REFERENCE, Preprocessing

MAX_ATTEMPTS = 100
MIN_OBJECT_COVERED = 0.1


def _decode_any(image_bytes):
    img = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    img.set_shape([None, None, 3])
    return img


def _decode_window(image_bytes, window_of):
    """The pixels inside `window_of(shape)` -> [offset_y, offset_x, height, width] of an encoded image.

    A JPEG's shape comes from its header and only the window is decoded; other formats are decoded once and
    sliced. One branch per image: a tf.cond per step (shape, then crop) costs a function call each."""
    def jpeg():
        window = window_of(tf.image.extract_jpeg_shape(image_bytes)[:2])
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def other():
        image = _decode_any(image_bytes)
        window = window_of(tf.shape(image)[:2])
        return tf.slice(image, tf.concat([window[:2], [0]], 0), tf.concat([window[2:], [3]], 0))

    img = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    img.set_shape([None, None, 3])
    return img


def center_crop_window(shape, crop_fraction: float):
    """(offset_y, offset_x, height, width) of the centre square keeping `crop_fraction` of the shorter side of
    an image of `shape` (height, width, ...)."""
    h, w = shape[0], shape[1]
    side = tf.cast(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return (h - side + 1) // 2, (w - side + 1) // 2, side, side


def decode_and_center_crop(image_bytes, crop_fraction: float):
    return _decode_window(image_bytes, lambda shape: tf.stack(center_crop_window(shape, crop_fraction)))


def decode_and_random_crop(image_bytes, seed, area_range, aspect_range, crop_fraction: float):
    """Inception-style crop; falls back to the centre crop of `crop_fraction` when no window was found in 100
    attempts."""
    def window_of(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.concat([shape, [3]], 0),
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            seed=seed,
            min_object_covered=MIN_OBJECT_COVERED,
            aspect_ratio_range=aspect_range,
            area_range=area_range,
            max_attempts=MAX_ATTEMPTS,
            use_image_if_no_bounding_boxes=True,
        )
        # The op returns the whole image when every attempt failed; the reference then uses the centre crop.
        failed = tf.reduce_all(tf.equal(size[:2], shape))
        return tf.where(failed, tf.stack(center_crop_window(shape, crop_fraction)),
                        tf.concat([begin[:2], size[:2]], 0))

    return _decode_window(image_bytes, window_of)


def resize(image, image_size, method="bilinear"):
    """Resizes to float32 [S, S, 3] in [0, 255]."""
    out = tf.image.resize(image, [image_size, image_size], method=method, antialias=False)
    # Bicubic overshoots. Bilinear weighs two neighbours by w and 1 - w with w in [0, 1], which rounding cannot
    # push past either (integer) pixel, so it skips the clip: a pass over every output pixel, about 5% of the
    # CPU time per training image at 224 px (docs/input_pipeline.md).
    if method != "bilinear":
        out = tf.clip_by_value(out, 0.0, 255.0)
    out.set_shape([image_size, image_size, 3])
    return out


def preprocess_for_eval(image_bytes, image_size, preprocessing: Preprocessing = REFERENCE):
    """Encoded image (any TF-decodable format) -> float32 [S, S, 3] in [0, 255]: the evaluation centre crop,
    resized."""
    crop = decode_and_center_crop(image_bytes, preprocessing.eval_fraction(image_size))
    return resize(crop, image_size, preprocessing.interpolation)


def preprocess_for_train(image_bytes, image_size, seed, preprocessing: Preprocessing = REFERENCE):
    """The random crop (or, without one, the evaluation crop), the optional flip and the resize; the policy
    augmenters come later (input.augment)."""
    _require_decided(preprocessing)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    fraction = preprocessing.eval_fraction(image_size)
    if preprocessing.random_crop:
        img = decode_and_random_crop(image_bytes, crop_seed, preprocessing.crop_area_range,
                                     preprocessing.crop_aspect_range, fraction)
    else:
        img = decode_and_center_crop(image_bytes, fraction)
    if preprocessing.random_flip:
        img = tf.image.stateless_random_flip_left_right(img, flip_seed)
    return resize(img, image_size, preprocessing.interpolation)


def _require_decided(preprocessing: Preprocessing):
    if not preprocessing.decided:
        raise ValueError(f"preprocessing settings not decided yet (random_crop={preprocessing.random_crop}, "
                         f"crop_area_range={preprocessing.crop_area_range}); call Preprocessing.for_images first")
