"""EfficientNet v1 (Tan & Le, 2019) as one functional Keras model.

The architecture is data: `BASE_BLOCKS` is the B0 stage table, `VARIANTS` the compound-scaling
coefficients. `decode_blocks` turns both into one concrete spec per MBConv block, and the builder only
walks that list, so what the tests check (block count, strides, skips, SE widths) is exactly what is built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import tensorflow as tf
from keras import layers


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """One row of the B0 table: `repeats` MBConv blocks sharing kernel, expansion and output width."""

    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int
    se_ratio: float = 0.25


BASE_BLOCKS = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280

# variant: (width, depth, native resolution, dropout)
VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Reference initializers (tensorflow/tpu efficientnet_model.py): He-normal-like on fan_out for convs,
# uniform 1/3 fan_out for the classifier.
CONV_INIT = {"class_name": "VarianceScaling",
             "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}
DENSE_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"}}


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """Every hyperparameter of the network; `--mparams key=value` overrides any field."""

    width_coefficient: float
    depth_coefficient: float
    resolution: int
    dropout_rate: float
    num_classes: int = 1000
    drop_connect_rate: float = 0.2
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    sync_bn: bool = False
    activation: str = "swish"
    depth_divisor: int = 8
    se_ratio: float = 0.25
    stem_filters: int = STEM_FILTERS
    head_filters: int = HEAD_FILTERS

    def __post_init__(self):
        checks = {
            "width_coefficient": self.width_coefficient > 0,
            "depth_coefficient": self.depth_coefficient > 0,
            "resolution": self.resolution > 0,
            "dropout_rate": 0 <= self.dropout_rate < 1,
            "num_classes": self.num_classes >= 1,
            "drop_connect_rate": 0 <= self.drop_connect_rate < 1,
            "bn_momentum": 0 <= self.bn_momentum < 1,
            "bn_epsilon": self.bn_epsilon > 0,
            "depth_divisor": self.depth_divisor >= 1,
            "se_ratio": 0 <= self.se_ratio <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid model parameter {bad[0]}={getattr(self, bad[0])!r}")
        try:
            keras.activations.get(self.activation)
        except (ValueError, TypeError):
            raise ValueError(f"invalid model parameter activation={self.activation!r}: not a Keras "
                             "activation name (e.g. swish, relu, gelu)") from None


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One concrete MBConv block after compound scaling."""

    name: str
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int
    se_filters: int  # 0 means no squeeze-excite
    drop_rate: float

    @property
    def has_skip(self) -> bool:
        return self.strides == 1 and self.filters_in == self.filters_out

    @property
    def filters_expanded(self) -> int:
        return self.filters_in * self.expand_ratio


def canonical_variant(variant: str) -> str:
    """'B4', 'efficientnet-b4', 'EfficientNetB4' -> 'b4'."""
    key = str(variant).strip().lower().replace("efficientnet", "").lstrip("-_")
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return key


def params_for(variant: str, **overrides: Any) -> ModelParams:
    width, depth, resolution, dropout = VARIANTS[canonical_variant(variant)]
    valid = {f.name for f in dataclasses.fields(ModelParams)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown model parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    fields = dict(width_coefficient=width, depth_coefficient=depth, resolution=resolution, dropout_rate=dropout)
    return ModelParams(**{**fields, **overrides})


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale by width, round to a multiple of divisor, never below 90% of the scaled value."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def decode_blocks(params: ModelParams) -> list[BlockSpec]:
    """The B0 table scaled by the variant: one BlockSpec per MBConv block, in order."""
    stages = [
        (stage, round_repeats(stage.repeats, params.depth_coefficient)) for stage in BASE_BLOCKS
    ]
    total = sum(repeats for _, repeats in stages)
    specs, index = [], 0
    for stage_no, (stage, repeats) in enumerate(stages, start=1):
        filters_in = round_filters(stage.filters_in, params.width_coefficient, params.depth_divisor)
        filters_out = round_filters(stage.filters_out, params.width_coefficient, params.depth_divisor)
        for r in range(repeats):
            block_in = filters_in if r == 0 else filters_out
            specs.append(BlockSpec(
                name=f"block{stage_no}{chr(ord('a') + r)}",
                kernel_size=stage.kernel_size,
                strides=stage.strides if r == 0 else 1,
                expand_ratio=stage.expand_ratio,
                filters_in=block_in,
                filters_out=filters_out,
                # The SE bottleneck is sized from the block's input width, not the expanded one.
                se_filters=max(1, int(block_in * params.se_ratio)) if params.se_ratio > 0 else 0,
                drop_rate=params.drop_connect_rate * index / total,
            ))
            index += 1
    return specs


@keras.saving.register_keras_serializable("efficientnet_tf2")
class BatchNorm(layers.BatchNormalization):
    """Keras BatchNormalization computed by TensorFlow's fused kernel (FusedBatchNormV3).

    Keras 3 builds BatchNorm from separate mean/variance/normalize ops; forward and backward then make
    about ten passes over each activation; the fused kernel makes two (B0 training on CPU: see
    docs/performance.md). Weights, momentum and the moving-variance rule (biased batch variance, as Keras)
    are unchanged, so checkpoints and numbers carry over. Synchronized (cross-replica) BatchNorm keeps
    Keras's own path, which all-reduces the moments.
    """

    def call(self, inputs, training=None, mask=None):
        if self.synchronized or mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        # 16-bit activations go in as they are: the kernel accumulates statistics in float32.
        x = inputs if inputs.dtype in (tf.float32, tf.float16, tf.bfloat16) else tf.cast(inputs, tf.float32)
        if training and self.trainable:
            none = tf.zeros([0], tf.float32)
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=self.gamma, offset=self.beta, mean=none, variance=none, epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            # The kernel returns the unbiased (n / (n - 1)) variance, 0 when n == 1; Keras keeps the biased.
            shape = tf.shape(x)
            n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            variance *= (n - 1.0) / n
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=self.gamma, offset=self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
        return tf.cast(y, self.compute_dtype)


@tf.function(jit_compile=True)
def _swish_gradient(x, dy):
    s = tf.sigmoid(x)
    return dy * (s * (1.0 + x * (1.0 - s)))


@tf.custom_gradient
def swish(x):
    """x * sigmoid(x), as Keras's "swish", with its gradient compiled by XLA into one pass over memory.

    TensorFlow's silu gradient is six separate element-wise ops (sigmoid recomputed, then subtract,
    multiply, add, multiply, multiply), each a full pass over the activation; over B0's 49 swishes that
    was about a quarter of a CPU training step's op time. XLA fuses the six into one loop (2.3x faster
    forward + backward per activation here); only this small function is compiled, not the network.
    """
    return x * tf.sigmoid(x), lambda dy: _swish_gradient(x, dy)


def _activation(params: ModelParams):
    return swish if params.activation == "swish" else params.activation


def _batch_norm(params: ModelParams, name: str) -> layers.Layer:
    return BatchNorm(momentum=params.bn_momentum, epsilon=params.bn_epsilon, synchronized=params.sync_bn,
                     name=name)


def _mbconv(x, spec: BlockSpec, params: ModelParams):
    inputs = x
    name = spec.name
    act = _activation(params)
    if spec.expand_ratio != 1:
        x = layers.Conv2D(spec.filters_expanded, 1, padding="same", use_bias=False,
                          kernel_initializer=CONV_INIT, name=f"{name}_expand_conv")(x)
        x = _batch_norm(params, f"{name}_expand_bn")(x)
        x = layers.Activation(act, name=f"{name}_expand_activation")(x)
    x = layers.DepthwiseConv2D(spec.kernel_size, strides=spec.strides, padding="same", use_bias=False,
                               depthwise_initializer=CONV_INIT, name=f"{name}_dwconv")(x)
    x = _batch_norm(params, f"{name}_bn")(x)
    x = layers.Activation(act, name=f"{name}_activation")(x)
    if spec.se_filters:
        se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(x)
        se = layers.Conv2D(spec.se_filters, 1, padding="same", activation=act,
                           kernel_initializer=CONV_INIT, name=f"{name}_se_reduce")(se)
        se = layers.Conv2D(spec.filters_expanded, 1, padding="same", activation="sigmoid",
                           kernel_initializer=CONV_INIT, name=f"{name}_se_expand")(se)
        x = layers.Multiply(name=f"{name}_se_excite")([x, se])
    x = layers.Conv2D(spec.filters_out, 1, padding="same", use_bias=False,
                      kernel_initializer=CONV_INIT, name=f"{name}_project_conv")(x)
    x = _batch_norm(params, f"{name}_project_bn")(x)
    if spec.has_skip:
        if spec.drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample (Dropout rescales by 1/keep).
            x = layers.Dropout(spec.drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_model(variant: str = "b0", num_classes: int = 1000, *, image_size: int | None = None,
                **overrides: Any) -> keras.Model:
    """EfficientNet `variant` ('b0'..'b7') mapping float images in [0, 255] (NHWC) to float32 logits.

    `image_size` fixes the input's spatial size (needed only for FLOP counting); by default any size works.
    `overrides` replace fields of ModelParams (dropout_rate, drop_connect_rate, bn_momentum, ...).
    """
    params = params_for(variant, num_classes=num_classes, **overrides)
    return build_from_params(params, image_size=image_size, name=f"efficientnet-{canonical_variant(variant)}")


def build_from_params(params: ModelParams, *, image_size: int | None = None,
                      name: str = "efficientnet") -> keras.Model:
    act = _activation(params)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
    std = [1.0 / s for s in IMAGENET_STD]
    x = layers.Rescaling(scale=std, offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
                         name="normalize")(inputs)
    x = layers.Conv2D(round_filters(params.stem_filters, params.width_coefficient, params.depth_divisor), 3,
                      strides=2, padding="same", use_bias=False, kernel_initializer=CONV_INIT,
                      name="stem_conv")(x)
    x = _batch_norm(params, "stem_bn")(x)
    x = layers.Activation(act, name="stem_activation")(x)
    for spec in decode_blocks(params):
        x = _mbconv(x, spec, params)
    x = layers.Conv2D(round_filters(params.head_filters, params.width_coefficient, params.depth_divisor), 1,
                      padding="same", use_bias=False, kernel_initializer=CONV_INIT, name="top_conv")(x)
    x = _batch_norm(params, "top_bn")(x)
    x = layers.Activation(act, name="top_activation")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if params.dropout_rate > 0:
        x = layers.Dropout(params.dropout_rate, name="top_dropout")(x)
    x = layers.Dense(params.num_classes, kernel_initializer=DENSE_INIT, name="predictions")(x)
    # Logits leave the model in float32 whatever the mixed-precision policy, so softmax/loss stay stable.
    logits = layers.Activation("linear", dtype="float32", name="logits")(x)
    model = keras.Model(inputs, logits, name=name)
    model.params = params  # what the model was built from, for checkpoints and summaries
    return model
