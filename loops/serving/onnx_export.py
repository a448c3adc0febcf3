"""ONNX export: the frozen inference form (efficientnet.serving) converted by tf2onnx.

  input  images         float32 [N, S, S, 3], pixels in [0, 255], already centre-cropped and resized to S
  output probabilities  float32 [N, C]

The input is the SavedModel's serving_pixels contract (NHWC, as TensorFlow has it; ONNX Runtime transposes
once, at the stem). The export's facts (class names, size, crop) ride along as metadata_props, so a lone
.onnx file still says how to feed it.
"""

from __future__ import annotations

import json
import logging

import keras
import tensorflow as tf

from efficientnet.serving import probability_function
from loops.serving import dependencies

# Opset 17 is what ONNX Runtime 1.32 and tf2onnx 1.17 both support fully, and what the Keras baseline in
# scripts/compare_with_keras.py is converted with.
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
METADATA_KEY = "efficientnet_export_info"


def onnx_model(model: keras.Model, image_size: int, metadata: dict | None = None):
    """The onnx.ModelProto of `model`'s inference form: images -> probabilities, any batch size."""
    dependencies.require(dependencies.ONNX_EXPORT, "--format onnx")
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # it logs every optimizer pass at INFO
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)
    # Squeeze-excite as 1x1 convolutions: see efficientnet/serving.py on tf2onnx's transposes.
    probabilities = probability_function(model, spec, se_as_matmul=False)
    proto, _ = tf2onnx.convert.from_function(probabilities, input_signature=[spec], opset=OPSET)
    _rename_output(proto, OUTPUT_NAME)
    if metadata is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return proto


def _rename_output(proto, name: str):
    # tf2onnx names graph outputs after TensorFlow's tensors (Identity:0 ...); users address them by name.
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    proto.graph.output[0].name = name
