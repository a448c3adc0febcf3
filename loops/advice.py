"""Settings that are right on a GPU but slow on a CPU: warn with the numbers measured here (docs/benchmarks.md)."""

from __future__ import annotations

import tensorflow as tf

from loops.config import TrainConfig

# Measured on a 2-core AVX-512 CPU, TensorFlow 2.21, EfficientNet-B0 at 224 px (see docs/benchmarks.md).
CPU_FACTS = {
    "use_xla": "XLA on this CPU made B0 training about 6x slower and compiled for minutes",
    "amp_bf16": "mixed_bfloat16 on the CPU trained B0 about 1.6x slower than fp32",
    "amp_fp16": "mixed_float16 on the CPU trained B0 about 19x slower than fp32 (no fast float16 kernels)",
}


def slowdown_warnings(cfg: TrainConfig, has_gpu: bool | None = None) -> list[str]:
    if has_gpu is None:
        has_gpu = bool(tf.config.list_logical_devices("GPU"))
    if has_gpu:
        return []
    notes = []
    if cfg.use_xla:
        notes.append(f"--use_xla on a machine without a GPU: {CPU_FACTS['use_xla']}; drop it here.")
    if cfg.precision in ("amp_bf16", "amp_fp16"):
        notes.append(f"--precision {cfg.precision} on a machine without a GPU: {CPU_FACTS[cfg.precision]}; "
                     "use fp32 here.")
    return notes
