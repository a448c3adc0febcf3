"""EfficientNet v1's architecture as data: the B0 stage table, the compound-scaling coefficients, and
`decode_blocks`, which turns both into one concrete spec per MBConv block (`efficientnet.model` only walks
that list). Plain Python, no TensorFlow: configs and command-line parsing validate models without loading it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


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
CLASSIFIER_INITS = ("fan_out", "fan_in")


def classifier_initializer(mode: str = "fan_out") -> dict:
    """Uniform with variance 1 / (3 x fan): the reference's fan_out is the class count, fan_in the head's
    features (1280 in B0), whatever the class count."""
    return {"class_name": "VarianceScaling", "config": {"scale": 1.0 / 3.0, "mode": mode, "distribution": "uniform"}}


# Keras activation names the builder accepts ("swish" is ours: efficientnet.model.swish).
ACTIVATIONS = ("swish", "silu", "relu", "relu6", "gelu", "elu", "selu", "leaky_relu", "mish", "hard_swish",
               "hard_silu", "tanh", "sigmoid", "softplus", "linear")


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
    # The input normalisation (x - input_mean) / input_std in 0-255 pixels, per RGB channel (one value: all
    # three). Weights trained with another one (AdvProp, timm's *.ap_in1k: 127.5; Keras models trained from
    # scratch: 0 and 255) compute their own function only with it, since a different mean cannot be folded
    # into the stem exactly (its zero padding would differ).
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD
    # The reference's classifier init scales with 1 / class count: made for 1000 classes (initial logits of
    # std ~0.4), it starts 10 classes at std ~4, a loss of ~6 instead of ln 10 = 2.3, and short runs spend
    # their first epochs undoing it or never recover (docs/small_images.md). fan_in gives every class count
    # the 1000-class scale.
    classifier_init: str = "fan_out"

    def __post_init__(self):
        for name in ("input_mean", "input_std"):
            object.__setattr__(self, name, _per_channel(name, getattr(self, name)))
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
            "input_std": min(self.input_std) > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid model parameter {bad[0]}={getattr(self, bad[0])!r}")
        if self.classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f"invalid model parameter classifier_init={self.classifier_init!r}: not one of "
                             f"{', '.join(CLASSIFIER_INITS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"invalid model parameter activation={self.activation!r}: not one of "
                             f"{', '.join(ACTIVATIONS)}")


def _per_channel(name: str, value) -> tuple[float, float, float]:
    """A number or three (a tuple, a list from run_spec.json, or "a:b:c" from --mparams) -> 3 floats."""
    if isinstance(value, str):
        value = value.split(":")
    values = [value] if isinstance(value, (int, float)) else list(value)
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        floats = ()
    if len(floats) not in (1, 3):
        raise ValueError(f"invalid model parameter {name}={value!r}: one number or three (R:G:B), in pixels")
    return floats * 3 if len(floats) == 1 else floats


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
