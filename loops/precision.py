"""Numeric precision of a process: the Keras dtype policy (mixed float16/bfloat16) and TF32 matmuls."""

from __future__ import annotations

import keras
import tensorflow as tf

POLICIES = {"fp32": "float32", "tf32": "float32", "amp_fp16": "mixed_float16", "amp_bf16": "mixed_bfloat16"}


def set_precision(precision: str):
    """Applies to models built afterwards (the policy is read when layers are made)."""
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
