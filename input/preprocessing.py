"""Per-image decode, crop and resize, all graph ops (no Python per image).

JPEG bytes take the fused decode-and-crop path: the crop window is decided from the header alone, so only
the pixels inside it are decoded. Other formats (PNG, BMP, GIF) are fully decoded, then cropped the same way.
"""
from __future__ import annotations

import tensorflow as tf

from input.config import DEFAULT_CROP_AREA, DEFAULT_CROP_ASPECT

CROP_PADDING = 32
MAX_ATTEMPTS = 100
MIN_OBJECT_COVERED = 0.1


def _shape(image_bytes):
    """(height, width) from the JPEG header, else by decoding (formats without a cheap header op)."""
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.image.extract_jpeg_shape(image_bytes)[:2],
        lambda: tf.shape(_decode_any(image_bytes))[:2],
    )


def _decode_any(image_bytes):
    img = tf.io.decode_image(image_bytes, channels=3, expand_animations=False, dtype=tf.uint8)
    img.set_shape([None, None, 3])
    return img


def _crop(image_bytes, offset_y, offset_x, h, w):
    def jpeg():
        return tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([offset_y, offset_x, h, w]), channels=3)

    def other():
        return tf.image.crop_to_bounding_box(_decode_any(image_bytes), offset_y, offset_x, h, w)

    img = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    img.set_shape([None, None, 3])
    return img


def _center_window(shape, image_size, crop_fraction=None):
    h, w = shape[0], shape[1]
    if crop_fraction is None:
        crop_fraction = image_size / (image_size + CROP_PADDING)
    side = tf.cast(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return (h - side + 1) // 2, (w - side + 1) // 2, side, side


def center_crop_window(shape, image_size, crop_fraction=None):
    """(offset_y, offset_x, height, width) of the eval centre crop for an image of `shape` (height, width, ...)."""
    return _center_window(shape, image_size, crop_fraction)


def decode_and_center_crop(image_bytes, image_size, crop_fraction=None):
    shape = _shape(image_bytes)
    return _crop(image_bytes, *_center_window(shape, image_size, crop_fraction))


def decode_and_random_crop(image_bytes, image_size, seed, area_range=DEFAULT_CROP_AREA,
                           aspect_range=DEFAULT_CROP_ASPECT, crop_fraction=None):
    """Inception-style crop; falls back to the eval centre crop when no window was found in 100 attempts."""
    shape = _shape(image_bytes)
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
    window = tf.cond(
        failed,
        lambda: tf.stack(_center_window(shape, image_size, crop_fraction)),
        lambda: tf.stack([begin[0], begin[1], size[0], size[1]]),
    )
    return _crop(image_bytes, window[0], window[1], window[2], window[3])


def resize(image, image_size, method="bilinear"):
    """Resizes to float32 [S, S, 3] in [0, 255] (bicubic overshoots, hence the clip)."""
    out = tf.image.resize(image, [image_size, image_size], method=method, antialias=False)
    out = tf.clip_by_value(out, 0.0, 255.0)
    out.set_shape([image_size, image_size, 3])
    return out


def preprocess_for_eval(image_bytes, image_size, resize_method="bilinear", crop_fraction=None):
    """Encoded image (any TF-decodable format) -> float32 [S, S, 3] in [0, 255], eval centre crop.

    crop_fraction: None for the reference size/(size+32); pass DatasetInfo.eval_crop_fraction."""
    return resize(decode_and_center_crop(image_bytes, image_size, crop_fraction), image_size, resize_method)


def preprocess_for_train(image_bytes, image_size, seed, resize_method="bilinear", area_range=DEFAULT_CROP_AREA,
                         random_flip=True, crop_fraction=None):
    """Random crop, optional flip and resize, without the policy augmenters (see input.augment)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    img = decode_and_random_crop(image_bytes, image_size, crop_seed, area_range, crop_fraction=crop_fraction)
    if random_flip:
        img = tf.image.stateless_random_flip_left_right(img, flip_seed)
    return resize(img, image_size, resize_method)
