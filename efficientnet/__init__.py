"""EfficientNet v1 B0-B7: `build_model` and the facts it is built from."""

from efficientnet.model import (BASE_BLOCKS, VARIANTS, BlockSpec, ModelParams, build_from_params,
                                build_model, canonical_variant, decode_blocks, params_for,
                                round_filters, round_repeats)
from efficientnet.overrides import parse_overrides
from efficientnet.summary import ModelSummary, multiply_adds, summarize

__all__ = [
    "BASE_BLOCKS", "VARIANTS", "BlockSpec", "ModelParams", "ModelSummary", "build_from_params", "build_model",
    "canonical_variant", "decode_blocks", "multiply_adds", "params_for", "parse_overrides", "round_filters",
    "round_repeats", "summarize",
]
