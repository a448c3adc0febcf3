"""Running a served network in a runtime: TensorFlow (a checkpoint's inference form or a loaded SavedModel),
ONNX Runtime and the TFLite (LiteRT) interpreter, behind one call: float32 images [N, S, S, 3] in [0, 255],
centre-cropped and resized (input.preprocess_for_eval) -> float32 probabilities [N, C].

The export's self-checks, predict.py and the inference benchmark all run artifacts through these, so what
is checked is what is served.
"""

from __future__ import annotations

import os

import numpy as np

from loops.serving import dependencies
from loops.serving.onnx_export import onnx_model
from loops.serving.tflite_export import tflite_model

EXPORT_INFO = "export_info.json"  # what export.py wrote and how to feed it
ONNX_FILE = "model.onnx"
SAVED_MODEL_FILE = "saved_model.pb"


def tflite_file(precision: str) -> str:
    return f"model_{precision}.tflite"


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class TensorFlowRunner:
    """A traced TensorFlow function images -> probabilities (efficientnet.serving.probability_function)."""

    backend = "tf"

    def __init__(self, probabilities, what: str = "TensorFlow"):
        import tensorflow as tf

        self._fn = probabilities
        self.description = f"{what} {tf.__version__}"

    def __call__(self, images) -> np.ndarray:
        return self._fn(images).numpy()


class SavedModelRunner(TensorFlowRunner):
    """An exported SavedModel loaded with tf.saved_model.load, called through its serving_pixels signature."""

    def __init__(self, path: str):
        import tensorflow as tf

        signature = tf.saved_model.load(path).signatures["serving_pixels"]

        def probabilities(images):
            return signature(images=tf.convert_to_tensor(images, tf.float32))["probabilities"]

        super().__init__(probabilities, "TensorFlow SavedModel")


def onnxruntime_session(model: str | bytes):
    """An ONNX Runtime CPU session with the options our serving path uses (docs/deployment.md)."""
    dependencies.require(dependencies.ONNX_RUNTIME, "the onnxruntime backend")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's concern
    # ONNX Runtime's intra-op threads spin-wait for work after each op and each call by default. On a machine
    # that also runs other work (the input pipeline, other services) that spinning takes the cores they need;
    # on our shared 2-core machine it cost throughput and tail latency (docs/deployment.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    backend = "onnxruntime"

    def __init__(self, model: str | bytes):
        import onnxruntime as ort

        self._session = onnxruntime_session(model)
        self._input = self._session.get_inputs()[0].name
        self.description = f"ONNX Runtime {ort.__version__}"

    def __call__(self, images) -> np.ndarray:
        return self._session.run(None, {self._input: np.asarray(images, np.float32)})[0]


class TFLiteRunner:
    """The LiteRT interpreter (ai-edge-litert; TensorFlow's own tf.lite.Interpreter is deprecated), resized to
    each new batch size it is given."""

    backend = "tflite"

    def __init__(self, model: str | bytes):
        dependencies.require(dependencies.TFLITE_RUNTIME, "the tflite backend")
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": model}
        self._interpreter = Interpreter(**source, num_threads=_cpu_count())
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = None
        self.description = f"LiteRT {getattr(ai_edge_litert, '__version__', '')}".strip()

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, images.shape, strict=True)
            self._interpreter.allocate_tensors()
            self._batch = images.shape[0]
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


def open_artifact(path: str, backend: str):
    """A runner for an exported file (model.onnx, model_*.tflite) or SavedModel directory."""
    if backend == "onnxruntime":
        return OnnxRunner(path)
    if backend == "tflite":
        return TFLiteRunner(path)
    return SavedModelRunner(path)


def model_runner(model, image_size: int, backend: str, batch_size: int | None = None):
    """A runner for a Keras model (a restored checkpoint) in `backend`: TensorFlow runs its inference form
    (traced for `batch_size`, or any batch when None); ONNX Runtime and LiteRT run its ONNX / TFLite fp32
    export, converted in memory."""
    dependencies.require(dependencies.for_backend(backend, converting=True), f"--backend {backend}")
    if backend == "onnxruntime":
        return OnnxRunner(onnx_model(model, image_size).SerializeToString())
    if backend == "tflite":
        return TFLiteRunner(tflite_model(model, image_size, "fp32"))
    import tensorflow as tf

    from efficientnet.serving import probability_function

    return TensorFlowRunner(probability_function(
        model, tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32)))
