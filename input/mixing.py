"""Mixup and CutMix on a batch; pure TF so the train step can run it too (--defer_img_mixing)."""
from __future__ import annotations

import tensorflow as tf


def _beta(alpha, seed, dtype=tf.float32):
    """Beta(alpha, alpha) as a ratio of two gammas (TF has no Beta sampler)."""
    if seed is None:
        g = tf.random.gamma([2], alpha, dtype=dtype)
    else:
        g = tf.random.stateless_gamma([2], seed, alpha=alpha, dtype=dtype)
    return g[0] / tf.maximum(g[0] + g[1], 1e-12)


def _uniform(seed, shape=()):
    if seed is None:
        return tf.random.uniform(shape)
    return tf.random.stateless_uniform(shape, seed)


def mixup(images, labels, alpha, seed=None):
    lam = _beta(alpha, seed)
    partner_x, partner_y = tf.reverse(images, [0]), tf.reverse(labels, [0])
    lam_x = tf.cast(lam, images.dtype)
    return lam_x * images + (1 - lam_x) * partner_x, lam * labels + (1 - lam) * partner_y


def cutmix(images, labels, alpha, seed=None):
    """Pastes a box of each partner image; labels are mixed by the box's actual (clipped) area."""
    s = [None, None, None] if seed is None else tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    lam = _beta(alpha, s[0])
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    cut = tf.sqrt(1.0 - lam)
    ch, cw = tf.cast(hf * cut, tf.int32), tf.cast(wf * cut, tf.int32)
    cy = tf.cast(_uniform(s[1]) * hf, tf.int32)
    cx = tf.cast(_uniform(s[2]) * wf, tf.int32)
    y0, y1 = tf.clip_by_value(cy - ch // 2, 0, h), tf.clip_by_value(cy + ch // 2, 0, h)
    x0, x1 = tf.clip_by_value(cx - cw // 2, 0, w), tf.clip_by_value(cx + cw // 2, 0, w)
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    box = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / (hf * wf)
    partner_x, partner_y = tf.reverse(images, [0]), tf.reverse(labels, [0])
    mixed = tf.where(box[None, :, :, None], partner_x, images)
    return mixed, (1 - area) * labels + area * partner_y


def mix_batch(images, labels_onehot, *, mixup_alpha, cutmix_alpha, seed=None):
    """Mixes a batch with its reverse. With both alphas > 0, each batch gets CutMix or Mixup with prob 0.5
    (timm / NVIDIA convention). Label rows keep their sum. seed: None (stateful RNG) or a [2] int tensor."""
    images = tf.convert_to_tensor(images)
    # Labels stay float32 even when images are float16/bfloat16 (mixed precision in the train step).
    labels_onehot = tf.cast(labels_onehot, tf.float32)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, labels_onehot
    if cutmix_alpha <= 0:
        return mixup(images, labels_onehot, mixup_alpha, seed)
    if mixup_alpha <= 0:
        return cutmix(images, labels_onehot, cutmix_alpha, seed)
    s = [None, None, None] if seed is None else tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    return tf.cond(
        _uniform(s[0]) < 0.5,
        lambda: cutmix(images, labels_onehot, cutmix_alpha, s[1]),
        lambda: mixup(images, labels_onehot, mixup_alpha, s[2]),
    )
