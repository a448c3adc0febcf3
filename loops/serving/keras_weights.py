"""export.py --format keras: the trained network as a keras.applications EfficientNet weights file, so
`keras.applications.EfficientNetB<k>(weights=FILE, classes=C, classifier_activation=None)` computes our logits
(efficientnet.pretrained.save_keras_weights writes the layout and the input normalisation), and the runner the
export's self-check loads it back with."""

from __future__ import annotations

import keras
import numpy as np

from efficientnet.pretrained import save_keras_weights

KERAS_FILE = "keras_weights.h5"  # the released files' HDF5 layout, which Keras 2 and 3 both read


def write_keras_weights(model: keras.Model, path: str, ckpt: str):
    try:
        save_keras_weights(model, path)
    except ValueError as e:
        raise ValueError(f"--ckpt {ckpt}: {e}") from None


def load_with(variant: str, num_classes: int, path: str) -> str:
    return (f"keras.applications.EfficientNet{variant.upper()}(weights={path!r}, classes={num_classes}, "
            "classifier_activation=None)")


class KerasApplicationsRunner:
    """keras.applications' own EfficientNet built from the written file: images -> probabilities."""

    backend = "keras"

    def __init__(self, path: str, variant: str, num_classes: int, image_size: int):
        build = getattr(keras.applications, f"EfficientNet{variant.upper()}")
        self._model = build(weights=path, classes=num_classes, input_shape=(image_size, image_size, 3),
                            classifier_activation=None)
        self.description = f"keras.applications {keras.__version__}"

    def __call__(self, images) -> np.ndarray:
        logits = np.asarray(self._model(np.asarray(images, np.float32), training=False), np.float64)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return (exp / exp.sum(-1, keepdims=True)).astype(np.float32)
