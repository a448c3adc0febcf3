"""AutoAugment (policy v0) and RandAugment as graph ops on one image.

Images are float32 [H, W, 3] in [0, 255]; every random choice is stateless and derived from a [2] seed, so a
seeded pipeline is reproducible. The operations and their level -> argument mappings follow the
tensorflow/tpu reference (max level 10). Its pixel constants (translate, cutout) are absolute pixels at any
image size: they apply as they are from 224 px up (B4 at 380 px shifts by the reference's pixels), are scaled
down in proportion below 224 px so small images are not wiped out, and a shift never exceeds MAX_SHIFT of the
image (the reference's own largest share, 250 of 380 px), so no translation empties an image: at 224 px the
reference's AutoAugment TranslateY level 9 (225 px) would leave nothing but fill.
"""
from __future__ import annotations

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128.0
REFERENCE_SIZE = 224.0  # below it, the reference's pixel constants shrink with the image
MAX_SHIFT = 250.0 / 380.0  # AutoAugment's largest translation (level 10) over B4's image size


def _u(seed, shape=(), lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def _blend(degenerate, image, factor):
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _gray(image):
    return tf.image.rgb_to_grayscale(image)


def _transform(image, matrix):
    """matrix = [a0, a1, a2, b0, b1, b2, c0, c1] maps output (x, y) to input coordinates."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2], fill_value=FILL_VALUE, interpolation="NEAREST", fill_mode="CONSTANT")
    return out[0]


def _signed(value, seed):
    return tf.where(_u(seed) < 0.5, -value, value)


def _pixels(reference_pixels, size):
    """Reference pixels on an image side of `size` px: as they are from REFERENCE_SIZE up, in proportion below."""
    return reference_pixels * tf.minimum(1.0, tf.cast(size, tf.float32) / REFERENCE_SIZE)


# ---------------------------------------------------------------------------------------------- operations
def auto_contrast(image, _arg, _seed):
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    # Clipped: the division can round the top of the range to just above 255 (255.00002 was seen).
    scaled = tf.clip_by_value((image - lo) * 255.0 / tf.maximum(hi - lo, 1e-3), 0.0, 255.0)
    return tf.where(hi > lo, scaled, image)


def _equalize_channel(ch):
    ch = tf.cast(ch, tf.int32)
    hist = tf.math.bincount(ch, minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

    def lut():
        table = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
        table = tf.clip_by_value(tf.concat([[0], table[:-1]], 0), 0, 255)
        return tf.cast(tf.gather(table, ch), tf.float32)

    return tf.cond(step > 0, lut, lambda: tf.cast(ch, tf.float32))


def equalize(image, _arg, _seed):
    img = tf.round(image)
    return tf.stack([_equalize_channel(img[..., c]) for c in range(3)], -1)


def invert(image, _arg, _seed):
    return 255.0 - image


def rotate(image, degrees, seed):
    rad = _signed(degrees, seed) * (3.141592653589793 / 180.0)
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = tf.cos(rad), tf.sin(rad)
    return _transform(image, [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])


def posterize(image, bits, _seed):
    shift = tf.cast(8 - bits, tf.int32)
    img = tf.cast(tf.round(image), tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(img, shift), shift), tf.float32)


def solarize(image, threshold, _seed):
    return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image, addition, _seed):
    return tf.where(image < 128.0, tf.clip_by_value(image + addition, 0.0, 255.0), image)


def color(image, factor, _seed):
    return _blend(tf.tile(_gray(image), [1, 1, 3]), image, factor)


def contrast(image, factor, _seed):
    return _blend(tf.reduce_mean(_gray(image)) * tf.ones_like(image), image, factor)


def brightness(image, factor, _seed):
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor, _seed):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[tf.newaxis], kernel, [1, 1, 1, 1], "VALID")[0]
    # The border keeps its original pixels (the smoothing kernel does not fit there).
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    mask = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    degenerate = mask * degenerate + (1 - mask) * image
    return _blend(degenerate, image, factor)


def shear_x(image, level, seed):
    return _transform(image, [1.0, _signed(level, seed), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image, level, seed):
    return _transform(image, [1.0, 0.0, 0.0, _signed(level, seed), 1.0, 0.0, 0.0, 0.0])


def _shift(pixels, size, seed):
    size = tf.cast(size, tf.float32)
    return _signed(tf.minimum(_pixels(pixels, size), MAX_SHIFT * size), seed)


def translate_x(image, pixels, seed):
    px = _shift(pixels, tf.shape(image)[1], seed)
    return _transform(image, [1.0, 0.0, -px, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image, pixels, seed):
    px = _shift(pixels, tf.shape(image)[0], seed)
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, -px, 0.0, 0.0])


def cutout(image, pixels, seed):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    pad = tf.cast(_pixels(pixels, tf.minimum(h, w)), tf.int32)
    cy = tf.random.stateless_uniform([], seed, 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1), 0, w, dtype=tf.int32)
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = (tf.abs(ys - cy) < pad) & (tf.abs(xs - cx) < pad)
    return tf.where(inside[..., None], FILL_VALUE, image)


# ------------------------------------------------------------------------- level -> argument (reference table)
# Levels may be Python numbers or tensors (AutoAugment looks them up from the policy table in-graph).
def _enhance(level):
    return tf.maximum(0.0, level / MAX_LEVEL * 1.8 + 0.1)


def _op_table(translate_px: float, cutout_px: float):
    """name -> (op, level -> argument). translate_px / cutout_px: the reference's pixels at level 10."""
    return {
        "AutoContrast": (auto_contrast, lambda level: 0.0),
        "Equalize": (equalize, lambda level: 0.0),
        "Invert": (invert, lambda level: 0.0),
        "Rotate": (rotate, lambda level: level / MAX_LEVEL * 30.0),
        "Posterize": (posterize, lambda level: tf.clip_by_value(tf.floor(level / MAX_LEVEL * 4.0), 0.0, 8.0)),
        "Solarize": (solarize, lambda level: tf.floor(level / MAX_LEVEL * 256.0)),
        "SolarizeAdd": (solarize_add, lambda level: tf.floor(level / MAX_LEVEL * 110.0)),
        "Color": (color, _enhance),
        "Contrast": (contrast, _enhance),
        "Brightness": (brightness, _enhance),
        "Sharpness": (sharpness, _enhance),
        "ShearX": (shear_x, lambda level: level / MAX_LEVEL * 0.3),
        "ShearY": (shear_y, lambda level: level / MAX_LEVEL * 0.3),
        "TranslateX": (translate_x, lambda level: level / MAX_LEVEL * translate_px),
        "TranslateY": (translate_y, lambda level: level / MAX_LEVEL * translate_px),
        "Cutout": (cutout, lambda level: level / MAX_LEVEL * cutout_px),
    }


AUTOAUGMENT_OPS = _op_table(translate_px=250.0, cutout_px=100.0)
RANDAUGMENT_OPS = _op_table(translate_px=100.0, cutout_px=40.0)

# (op, probability, level) pairs of the AutoAugment ImageNet policy "v0".
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

RANDAUGMENT_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
                     "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")


def apply_op(image, name, level, seed, table=AUTOAUGMENT_OPS):
    fn, to_arg = table[name]
    return fn(image, to_arg(tf.cast(level, tf.float32)), seed)


def _switch(image, index, names, level, seed, table):
    """One op chosen by a tensor index; index == len(names) leaves the image unchanged."""
    branches = [lambda n=n: apply_op(image, n, level, seed, table) for n in names] + [lambda: image]
    return tf.ensure_shape(tf.switch_case(index, branches), image.shape)


def autoaugment(image, seed, policy=POLICY_V0):
    """Applies one uniformly chosen sub-policy; each of its two ops fires with its own probability.

    The policy is looked up as data (op index, probability, level tensors), so the graph holds each op
    once per slot instead of once per sub-policy entry.
    """
    names = sorted({op for sub in policy for op, _, _ in sub})
    ops = tf.constant([[names.index(op) for op, _, _ in sub] for sub in policy], tf.int32)
    probs = tf.constant([[p for _, p, _ in sub] for sub in policy], tf.float32)
    levels = tf.constant([[level for _, _, level in sub] for sub in policy], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 5)
    choice = tf.random.stateless_uniform([], seeds[0], 0, len(policy), dtype=tf.int32)
    img = image
    for k in range(ops.shape[1]):
        fire = _u(seeds[1 + 2 * k]) < probs[choice, k]
        index = tf.where(fire, ops[choice, k], len(names))
        img = _switch(img, index, names, levels[choice, k], seeds[2 + 2 * k], AUTOAUGMENT_OPS)
    return img


def randaugment(image, seed, num_layers=2, magnitude=10.0, names=RANDAUGMENT_NAMES):
    """num_layers times: one uniformly chosen op at the fixed magnitude (always applied, as in the reference)."""
    img = image
    for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, max(num_layers, 1)))[:num_layers]:
        pick_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
        choice = tf.random.stateless_uniform([], pick_seed, 0, len(names), dtype=tf.int32)
        img = _switch(img, choice, names, magnitude, op_seed, RANDAUGMENT_OPS)
    return img


def augment(image, seed, augmenter_name, num_layers=2, magnitude=10.0):
    if augmenter_name is None:
        return image
    if augmenter_name == "autoaugment":
        return autoaugment(image, seed)
    if augmenter_name == "randaugment":
        return randaugment(image, seed, num_layers, magnitude)
    raise ValueError(f"unknown --augmenter_name {augmenter_name!r} (autoaugment, randaugment)")
