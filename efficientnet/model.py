"""EfficientNet v1 (Tan & Le, 2019) as one functional Keras model, built by walking the block specs that
`efficientnet.params.decode_blocks` decodes from the B0 table and the variant's scaling coefficients.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import layers

from efficientnet.params import (CONV_INIT, BlockSpec, ModelParams, canonical_variant, classifier_initializer,
                                 decode_blocks, params_for, round_filters)


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


@tf.function(jit_compile=True, autograph=False)
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
    x = layers.Rescaling(scale=[1.0 / s for s in params.input_std],
                         offset=[-m / s for m, s in zip(params.input_mean, params.input_std)],
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
    x = layers.Dense(params.num_classes, kernel_initializer=classifier_initializer(params.classifier_init),
                     name="predictions")(x)
    # Logits leave the model in float32 whatever the mixed-precision policy, so softmax/loss stay stable.
    logits = layers.Activation("linear", dtype="float32", name="logits")(x)
    model = keras.Model(inputs, logits, name=name)
    model.params = params  # what the model was built from, for checkpoints and summaries
    return model
