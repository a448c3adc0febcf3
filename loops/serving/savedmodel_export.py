"""SavedModel export: two serving signatures that preprocess exactly as evaluation does, and one for images
preprocessed already.

  serving_default (image_bytes: string [N])       encoded images of any TF-decodable format and size
  serving_uint8   (images: uint8 [N, H, W, 3])    decoded pixels, one size per batch
  serving_pixels  (images: float32 [N, S, S, 3])  pixels in [0, 255], already centre-cropped and resized to S

The first two apply the run's evaluation centre crop and resize (recorded in run_spec.json: --crop_padding
or --eval_crop_fraction, --resize_method). All return
probabilities [N, C], top_k_class_ids [N, k], top_k_probabilities [N, k] and top_k_class_names [N, k].
"""

from __future__ import annotations

import tensorflow as tf

import input as data
from efficientnet.serving import serving_function
from input.config import REFERENCE, Preprocessing
# Reusing evaluation's own crop window and resize (rather than restating the formula) keeps the uint8
# signature identical to evaluation.
from input.preprocessing import center_crop_window, resize

SIGNATURES = {"serving_default": "image_bytes: string [N] (encoded images of any format and size; crops and resizes)",
              "serving_uint8": "images: uint8 [N, H, W, 3] (decoded pixels; crops and resizes)",
              "serving_pixels": "images: float32 [N, S, S, 3] in [0, 255], already centre-cropped and resized"}
OUTPUTS = ("probabilities", "top_k_class_ids", "top_k_probabilities", "top_k_class_names")


class ServingModule(tf.Module):
    """The signatures run `model`'s frozen inference form (efficientnet.serving): the SavedModel holds its
    weights as constants and no variables."""

    def __init__(self, model, class_names, image_size: int, top_k: int, preprocessing: Preprocessing = REFERENCE):
        super().__init__(name="efficientnet_serving")
        self._logits = serving_function(model, tf.TensorSpec([None, image_size, image_size, 3], tf.float32))
        self.image_size, self.preprocessing = image_size, preprocessing
        self.top_k = min(top_k, len(class_names))
        self.class_names = tuple(class_names)
        size = image_size
        self.serve_bytes = tf.function(self._serve_bytes, input_signature=[tf.TensorSpec([None], tf.string)],
                                       autograph=False)
        self.serve_uint8 = tf.function(self._serve_uint8, autograph=False,
                                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        self.serve_pixels = tf.function(self._outputs, autograph=False,
                                        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        self._pixel_spec = tf.TensorSpec([size, size, 3], tf.float32)

    def _outputs(self, images):
        probs = tf.nn.softmax(tf.cast(self._logits(images), tf.float32), axis=-1)
        top_p, top_i = tf.math.top_k(probs, k=self.top_k)
        return {"probabilities": probs, "top_k_class_ids": top_i, "top_k_probabilities": top_p,
                "top_k_class_names": tf.gather(tf.constant(self.class_names, tf.string), top_i)}

    def _serve_bytes(self, image_bytes):
        images = tf.map_fn(lambda b: data.preprocess_for_eval(b, self.image_size, self.preprocessing),
                           image_bytes, fn_output_signature=self._pixel_spec)
        return self._outputs(images)

    def _serve_uint8(self, images):
        def one(img):
            window = center_crop_window(tf.shape(img), self.preprocessing.eval_fraction(self.image_size))
            return resize(tf.image.crop_to_bounding_box(img, *window), self.image_size,
                          self.preprocessing.interpolation)

        return self._outputs(tf.map_fn(one, images, fn_output_signature=self._pixel_spec))


def save(module: ServingModule, output: str):
    tf.saved_model.save(module, output, signatures={
        "serving_default": module.serve_bytes.get_concrete_function(),
        "serving_uint8": module.serve_uint8.get_concrete_function(),
        "serving_pixels": module.serve_pixels.get_concrete_function(),
    })
