"""export.py --format keras: a trained checkpoint as a keras.applications EfficientNet weights file, so
`keras.applications.EfficientNetB<k>(weights=FILE, classes=C, classifier_activation=None)` computes our
logits (efficientnet.pretrained.save_keras_weights writes the layout and the normalisation)."""

from __future__ import annotations

import os

from efficientnet.pretrained import save_keras_weights
from loops.restore import restore_served
from loops.serving.config import ExportConfig


def export_keras_weights(cfg: ExportConfig) -> dict:
    """Writes cfg.output; returns what was written and how Keras loads it."""
    if os.path.isdir(cfg.output):
        raise FileExistsError(f"--output {cfg.output} is a directory; --format keras writes one .h5 file")
    if os.path.exists(cfg.output) and not cfg.overwrite:
        raise FileExistsError(f"--output {cfg.output} exists (pass --overwrite to replace it)")
    restored, weights = restore_served(cfg.ckpt, cfg.weights)
    spec = restored.spec
    try:
        save_keras_weights(restored.model, cfg.output)
    except ValueError as e:
        raise ValueError(f"--ckpt {cfg.ckpt}: {e}") from None
    variant = spec.variant.upper()
    return {"checkpoint": restored.checkpoint_path, "model": f"efficientnet-{spec.variant}",
            "num_classes": spec.num_classes, "weights": weights, "output": cfg.output,
            "layout": "keras 3 (.weights.h5)" if cfg.output.endswith(".weights.h5") else "legacy HDF5 (.h5)",
            "load_with": f"keras.applications.EfficientNet{variant}(weights={cfg.output!r}, "
                         f"classes={spec.num_classes}, classifier_activation=None)"}
