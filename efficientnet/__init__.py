"""EfficientNet v1 B0-B7: `build_model` and the facts it is built from.

The facts (efficientnet.params, efficientnet.overrides) are plain Python and load at once, so command-line
parsing can validate a model without TensorFlow; the Keras parts load on first use (PEP 562).
"""

import importlib

from efficientnet.overrides import parse_overrides
from efficientnet.params import (BASE_BLOCKS, VARIANTS, BlockSpec, ModelParams, canonical_variant, decode_blocks,
                                 params_for, round_filters, round_repeats)

_KERAS_PARTS = {"build_model": "efficientnet.model", "build_from_params": "efficientnet.model",
                "ModelSummary": "efficientnet.summary", "multiply_adds": "efficientnet.summary",
                "summarize": "efficientnet.summary"}
_SUBMODULES = ("model", "serving", "summary")

__all__ = [
    "BASE_BLOCKS", "VARIANTS", "BlockSpec", "ModelParams", "ModelSummary", "build_from_params", "build_model",
    "canonical_variant", "decode_blocks", "multiply_adds", "params_for", "parse_overrides", "round_filters",
    "round_repeats", "summarize",
]


def __getattr__(name):
    if name in _KERAS_PARTS:
        return getattr(importlib.import_module(_KERAS_PARTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"efficientnet.{name}")
    raise AttributeError(f"module 'efficientnet' has no attribute {name!r}")
