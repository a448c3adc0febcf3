"""The optional export runtimes (ONNX, ONNX Runtime, LiteRT): imported on first use, and when missing, an
error that says what to install. Plain Python: the entry points import this before TensorFlow."""

from __future__ import annotations

import importlib
import importlib.util

from loops.serving.config import EXPORT_REQUIREMENTS

# What each use needs: (module, pip package).
ONNX_EXPORT = (("tf2onnx", "tf2onnx"), ("onnx", "onnx"))
ONNX_RUNTIME = (("onnxruntime", "onnxruntime"),)
TFLITE_RUNTIME = (("ai_edge_litert", "ai-edge-litert"),)


def for_backend(backend: str, *, converting: bool) -> tuple[tuple[str, str], ...]:
    """What running in `backend` needs (`converting`: a checkpoint is converted in memory first)."""
    if backend == "onnxruntime":
        return (ONNX_EXPORT if converting else ()) + ONNX_RUNTIME
    return TFLITE_RUNTIME if backend == "tflite" else ()


class MissingDependencyError(ImportError):
    """An optional package a requested format or backend needs is not installed."""


def require(modules: tuple[tuple[str, str], ...], purpose: str):
    """Imports each module; raises MissingDependencyError naming `purpose`, the package and the requirements
    file when one is missing."""
    for module, package in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingDependencyError(
                f"{purpose} needs the optional package {package}, which is not installed ({e}); install the "
                f"export dependencies: pip install -r {EXPORT_REQUIREMENTS} -c constraints.txt") from None


def installed(modules: tuple[tuple[str, str], ...]) -> bool:
    """Whether every module can be found, without importing any."""
    return all(importlib.util.find_spec(module) is not None for module, _ in modules)
