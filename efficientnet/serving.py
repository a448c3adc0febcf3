"""The inference-only form of a trained network, for predict.py, the SavedModel export and the inference
benchmark. Same outputs as `model(x, training=False)` up to float rounding, in fewer and fusable ops:

- BatchNorm folded into the convolution before it. With fixed statistics BatchNorm is a per-channel scale
  and shift, so it lives in the kernel and a bias: w' = w * s, b' = beta + (b - mean) * s with
  s = gamma / sqrt(var + eps). Conv + bias + activation is what grappler's remapper fuses into one oneDNN
  kernel on CPU, where conv, then BatchNorm's multiply and add, then the activation each pass over memory.
- Swish spelled as the two plain ops x * sigmoid(x), the pattern the remapper fuses with a preceding
  Conv2D + bias. Keras's silu (tf.nn.silu) wraps them in a custom gradient with a beta factor; with it the
  remapper fused each conv with its bias alone and all 49 swishes stayed separate passes over memory. The
  model's own training swish (efficientnet.model.swish) is a custom gradient too; inference needs none.
- Squeeze-excite's 1x1 convolutions of a 1x1 map as matrix products (Dense): the same arithmetic, but a
  oneDNN convolution cost about 0.1 ms per call at this size on our CPU, a matmul about 0.02 ms. For the
  ONNX export they stay convolutions (`se_as_matmul=False`): tf2onnx turns the NHWC graph into NCHW and
  removes the transposes it inserts only where it can push them through every op; a [N, C] matrix product
  reshaped back for the excite multiply stops that, leaving two transposes of a full activation map per
  block (32 in B0), while 1x1 convolutions keep the whole graph NCHW.

`serving_function` also freezes the weights into graph constants, so grappler can fold what depends on
weights alone (docs/serving.md has the measurements).
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from efficientnet.model import swish as model_swish

_FOLDABLE = (layers.Conv2D, layers.DepthwiseConv2D)


def _producer(layer):
    node = layer._inbound_nodes[0]
    if len(node.input_tensors) != 1:
        return None
    return node.input_tensors[0]._keras_history.operation


def _fold_pairs(model: keras.Model) -> dict[str, str]:
    """{conv name: batch-norm name} for every BatchNorm whose input is a convolution without activation
    feeding nothing else."""
    pairs = {}
    for bn in model.layers:
        if not isinstance(bn, layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
            continue
        conv = _producer(bn)
        if (isinstance(conv, _FOLDABLE) and conv.activation is keras.activations.linear
                and bn.axis in (-1, len(bn.input.shape) - 1)
                and conv.data_format == "channels_last"
                and len(conv._inbound_nodes) == 1 and len(conv._outbound_nodes) == 1):
            pairs[conv.name] = bn.name
    return pairs


def _folded_weights(conv, bn) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of `conv` followed by `bn` in inference mode, computed in float64."""
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    out_channels = bn.moving_mean.shape[0]
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(out_channels)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(out_channels)
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(out_channels)
    scale = gamma / np.sqrt(var + bn.epsilon)
    # Conv2D kernels end in output channels; a depthwise kernel's [in, multiplier] flatten to them in order.
    kernel = kernel * scale.reshape(kernel.shape[-2:] if isinstance(conv, layers.DepthwiseConv2D) else -1)
    return kernel.astype(np.float32), (beta + (bias - mean) * scale).astype(np.float32)


def _swish(x):
    return ops.multiply(x, ops.sigmoid(x))


def _is_swish(layer) -> bool:
    return getattr(layer, "activation", None) in (keras.activations.silu, model_swish)


def _on_pooled_pixel(layer) -> bool:
    """A 1x1 convolution of a 1x1 map (squeeze-excite)."""
    return (type(layer) is layers.Conv2D and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1
            and tuple(layer.input.shape[1:3]) == (1, 1))


def inference_model(model: keras.Model, *, se_as_matmul: bool = True) -> keras.Model:
    """A new functional model computing `model(x, training=False)`: BatchNorm folded, swish spelled out,
    squeeze-excite convolutions as Dense layers (unless `se_as_matmul` is False); every other layer cloned with
    its weights and dtype policy."""
    pairs = _fold_pairs(model)
    folded_bns = set(pairs.values())

    def as_matmul(layer) -> bool:
        return se_as_matmul and _on_pooled_pixel(layer)

    def clone(layer):
        if layer.name in folded_bns or isinstance(layer, layers.Activation) and _is_swish(layer):
            return layer  # never called: `call` below stands in for it
        config = layer.get_config()
        if _is_swish(layer):
            config["activation"] = "linear"  # `call` applies it
        if as_matmul(layer):
            return layers.Dense(layer.filters, activation=config["activation"], use_bias=layer.use_bias,
                                dtype=config["dtype"], name=layer.name)
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, inputs, *args, **kwargs):
        if layer.name in folded_bns:
            return inputs
        if isinstance(layer, layers.Activation) and _is_swish(layer):
            return _swish(inputs)
        original = model.get_layer(layer.name)
        pooled = as_matmul(original)
        if pooled:
            # The matrix product on the [N, C] vector itself: Dense on [N, 1, 1, C] would compute its reshape
            # from the input's dynamic shape (Shape, Gather, Concat ops in ONNX, and transposes around it).
            inputs = ops.reshape(inputs, (-1, original.input.shape[-1]))
        outputs = layer(inputs, *args, **kwargs)
        outputs = _swish(outputs) if _is_swish(original) else outputs
        return ops.reshape(outputs, (-1, 1, 1, original.filters)) if pooled else outputs

    served = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if layer.name in folded_bns or not layer.weights:
            continue
        target = served.get_layer(layer.name)
        if layer.name in pairs:
            target.set_weights(list(_folded_weights(layer, model.get_layer(pairs[layer.name]))))
        elif as_matmul(layer):
            target.set_weights([w.reshape(w.shape[-2:]) if w.ndim == 4 else w for w in layer.get_weights()])
        else:
            target.set_weights(layer.get_weights())
    return served


def serving_function(model: keras.Model, input_spec: tf.TensorSpec, *,
                     se_as_matmul: bool = True) -> Callable[[tf.Tensor], tf.Tensor]:
    """images (matching `input_spec`) -> the logits of `model(images, training=False)`, computed by
    `inference_model(model)` with its weights frozen into constants: later changes to `model` do not
    reach it. Callable eagerly and from inside other tf.functions (a SavedModel's signatures)."""
    served = inference_model(model, se_as_matmul=se_as_matmul)

    # Named functions, not lambdas: AutoGraph cannot find a lambda's source when the callers' tf.functions
    # convert it, and warns on every trace.
    def logits(images):
        return served(images, training=False)

    frozen = convert_variables_to_constants_v2(tf.function(logits, autograph=False).get_concrete_function(input_spec))

    def frozen_logits(images):
        return frozen(images)[0]

    return frozen_logits


def probability_function(model: keras.Model, input_spec: tf.TensorSpec, *, se_as_matmul: bool = True):
    """A tf.function images (matching `input_spec`) -> float32 softmax probabilities of the frozen inference
    form: what predict.py runs and what the ONNX and TFLite exports convert."""
    logits = serving_function(model, input_spec, se_as_matmul=se_as_matmul)

    @tf.function(input_signature=[input_spec], autograph=False)
    def probabilities(images):
        return tf.nn.softmax(tf.cast(logits(images), tf.float32), axis=-1)

    return probabilities


def with_trained_like_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    """Gives `model` random BatchNorm statistics, scales and offsets and conv biases in the ranges trained
    networks have, for checking and timing the fold: at initialisation (zero means and offsets) the folded
    biases are zero, a wrong fold (axis, epsilon, order) hides, and grappler drops the bias adds, which
    changes what it fuses."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0.0, 0.3, n))
        elif isinstance(layer, layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape))
    return model
