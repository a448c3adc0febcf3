"""Fine-tuning controls: train only from a given layer on (--trainable_from, --freeze_backbone) and frozen
BatchNorm (--freeze_batch_norm).

A frozen layer gets Keras's `trainable = False`, which keeps its variables out of `model.trainable_variables`
and so out of the optimizer, the L2 penalty (loops.optimization.decayed_variables) and the gradient; the EMA
skips its shadows (loops.ema). Frozen BatchNorm runs in inference mode in training steps too (Keras 3's rule,
which efficientnet.model.BatchNorm follows): it normalises with its moving statistics and does not update
them. Pretrained statistics updated from small fine-tuning batches are what ruins accuracy most often.
The frozen part's stochastic depth is switched off as well, so the frozen part computes in training exactly
what it computes at evaluation, and the layers that train see the features they will be evaluated on.
"""

from __future__ import annotations

import keras

# --trainable_from values naming the head (loops.config.TRAINABLE_FROM_HEAD) -> the first layer that trains.
_HEAD_LAYERS = {"top": "top_conv", "predictions": "predictions"}


def _starts(layer_name: str, boundary: str) -> bool:
    return layer_name == boundary or layer_name.startswith(boundary + "_")


def freeze(model: keras.Model, trainable_from: str | None, freeze_batch_norm: bool = False) -> list[str]:
    """Freezes every layer before `trainable_from` (a block name such as block6a, top or predictions; None:
    none) and, with `freeze_batch_norm`, every BatchNorm layer. Returns the names of the weighted layers
    frozen, in model order. Call before the optimizer, the train step and the EMA are built."""
    if trainable_from is not None:
        boundary = _HEAD_LAYERS.get(trainable_from, trainable_from)
        names = [layer.name for layer in model.layers]
        first = next((i for i, name in enumerate(names) if _starts(name, boundary)), None)
        if first is None:
            raise ValueError(f"--trainable_from={trainable_from}: {model.name} has no layer {boundary}")
        for layer in model.layers[:first]:
            layer.trainable = False
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0  # stochastic depth of a frozen block: inference mode
    if freeze_batch_norm:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return [layer.name for layer in model.layers if layer.weights and not layer.trainable]
