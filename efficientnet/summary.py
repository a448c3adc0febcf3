"""Parameter and multiply-add counts of a built model, read off its layers."""

from __future__ import annotations

import dataclasses

import numpy as np
from keras import layers

from efficientnet.model import build_from_params
from efficientnet.params import ModelParams


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    name: str
    resolution: int
    trainable_params: int
    non_trainable_params: int
    multiply_adds: int


def count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def multiply_adds(model) -> int:
    """Multiply-adds of convolutions and dense layers (the paper's FLOPs), for a fixed-size input model."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += h * w * c * k
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            total += h * w * c_out * c_in * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def summarize(params: ModelParams, name: str, resolution: int | None = None) -> ModelSummary:
    resolution = resolution or params.resolution
    model = build_from_params(params, image_size=resolution, name=name)
    return ModelSummary(
        name=name,
        resolution=resolution,
        trainable_params=count_params(model.trainable_weights),
        non_trainable_params=count_params(model.non_trainable_weights),
        multiply_adds=multiply_adds(model),
    )
