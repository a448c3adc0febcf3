"""TFLite export: the frozen inference form (efficientnet.serving) converted by TensorFlow's TFLite converter,
in float32, with float16 weights, or quantized to int8 after training.

  input  float32 [N, S, S, 3], pixels in [0, 255], already centre-cropped and resized to S (N resizable)
  output float32 [N, C] probabilities

int8 is full-integer post-training quantization: weights per output channel, activations per tensor with
ranges calibrated on training images; input and output stay float32 (quantized inside the model), so every
artifact takes the same input. See docs/deployment.md for what it costs in top-1 and what recovers it.
"""

from __future__ import annotations

from typing import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from efficientnet.serving import probability_function


def tflite_model(model: keras.Model, image_size: int, precision: str,
                 calibration_images: Callable[[], Iterable[np.ndarray]] | None = None) -> bytes:
    """The .tflite flatbuffer of `model` at `precision` (loops.serving.config.TFLITE_PRECISIONS).
    calibration_images: for int8, yields single images float32 [S, S, 3]."""
    module = tf.Module()
    module.probabilities = probability_function(
        model, tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.probabilities.get_concrete_function()], module)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration_images is None:
            raise ValueError("TFLite int8 needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration_images())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()
