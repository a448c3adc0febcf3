"""Our training step and inference against Keras Applications' EfficientNet run the usual Keras way, in one
command, on the same synthetic batches, so the ratios hold on whatever machine runs it.

    .venv/bin/python scripts/compare_with_keras.py [--variant b0] [--image_size 224] [--batch_size 32]

Baselines: `keras.applications.EfficientNetB0` (or the variant's; with --mparams width/depth coefficients, the
same network from Keras Applications' builder) + `compile` (RMSprop, label-smoothed cross-entropy), timed by
calling the train function `fit` runs once per batch, for training; and a `tf.function` call of the same
Keras model at batch 1 for latency. Ours: the step of train.py's training benchmark (loops/bench/benchmark.py),
which does more per step than the baseline (the L2 penalty over all conv/dense weights and the EMA update of
every weight); for latency, the function predict.py calls (loops.serving.runtimes.model_runner, backend
tf) and the exported SavedModel loaded back with tf.saved_model.load, through its `serving_pixels` signature
(preprocessed images, like the baseline's input; it also takes the top-k) and, end to end, through
`serving_uint8` (which also crops and resizes). Our unoptimised model, called like the baseline, is timed as a
reference.

With requirements-export.txt installed, ONNX Runtime joins: the baseline is Keras's model exported with
`model.export` and converted by `python -m tf2onnx.convert --opset 17`, run by a default
`onnxruntime.InferenceSession`, as a user would; ours is export.py's model.onnx run the way predict.py and
the export's self-check run it (loops.serving.runtimes.OnnxRunner). Both at batch 1 (latency) and batch
--throughput_batch_size (img/s), round-robin like the rest; the predict.py path (TensorFlow) is set against
the same baseline, so the best backend of our serving path can be read off.

Training steps and latency calls go round-robin over the candidates, one call each in turn, so load from other
processes on a shared machine falls on all of them alike. Both networks get random BatchNorm statistics and
biases instead of their initial ones (zero means and offsets), as after training: zero biases would let
grappler drop the bias adds, which changes which ops it fuses.
"""

import os
import random
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import numpy as np  # noqa: E402

import efficientnet  # noqa: E402
from efficientnet.overrides import parse_overrides  # noqa: E402
from efficientnet.params import params_for  # noqa: E402
from efficientnet.pretrained import check_keras_architecture, keras_applications_model  # noqa: E402
from efficientnet.serving import with_trained_like_statistics  # noqa: E402
from loops import host_memory  # noqa: E402
from loops.bench.benchmark import training_steps  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.parallel.engine import Engine  # noqa: E402
from loops.evaluation import latency_percentiles  # noqa: E402
from loops.serving import dependencies  # noqa: E402
from loops.serving.onnx_export import OPSET, onnx_model  # noqa: E402
from loops.serving.runtimes import OnnxRunner, model_runner  # noqa: E402
from loops.serving.savedmodel_export import ServingModule, save  # noqa: E402

VARIANT = flags.DEFINE_enum("variant", "b0", ["b0", "b1", "b2", "b3"], "EfficientNet variant.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input size.")
BATCH = flags.DEFINE_integer("batch_size", 32, "Training batch size.")
STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps per side.")
WARMUP = flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (tracing, allocator growth).")
LATENCY_CALLS = flags.DEFINE_integer("latency_calls", 300, "Timed batch-1 inference calls per candidate.")
THROUGHPUT_BATCH = flags.DEFINE_integer("throughput_batch_size", 32, "ONNX Runtime throughput batch size.")
THROUGHPUT_CALLS = flags.DEFINE_integer("throughput_calls", 10, "Timed ONNX Runtime calls at that batch size.")
MPARAMS = flags.DEFINE_string("mparams", "", "Model overrides for both networks, as train.py's --mparams (e.g. "
                              "width_coefficient=0.25,depth_coefficient=0.1); only those Keras Applications' "
                              "builder can follow.")


def keras_fit_step(params, size, batch):
    """Keras's compiled training step, the function Model.fit calls once per batch, on one synthetic batch."""
    keras.utils.set_random_seed(0)
    model = keras_applications_model(params, input_shape=(size, size, 3))
    model.compile(optimizer=keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    x = tf.random.uniform((batch, size, size, 3), maxval=255.0)
    y = tf.one_hot(tf.random.uniform((batch,), maxval=1000, dtype=tf.int32), 1000)
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    model.make_train_function()
    return lambda: model.train_function(iterator)


def our_train_step(variant, overrides, size, batch, model_dir):
    """Our training step as train.py's training benchmark runs it (loss, L2, RMSprop, EMA)."""
    cfg = TrainConfig(model_dir=model_dir, variant=variant, num_classes=1000, mode="training_benchmark",
                      model_overrides=overrides)
    engine = Engine(tf.distribute.OneDeviceStrategy("/gpu:0" if tf.config.list_logical_devices("GPU")
                                                    else "/cpu:0"), "one_device")
    _, step = next(training_steps(cfg, engine, "fp32", 1000, (batch,), size))
    return step


def round_robin(candidates: dict, calls: int, warmup: int) -> dict:
    """{name: (fn, input)} -> {name: seconds of each timed call}, calling each candidate once per round (in a
    shuffled order), so load from other processes on a shared machine falls on all of them alike."""
    for fn, x in candidates.values():
        for _ in range(warmup):
            _on_host(fn(x))
    seconds = {name: [] for name in candidates}
    rng = random.Random(0)
    for _ in range(calls):
        # A new order every round: a runtime whose threads spin-wait after a call (ONNX Runtime's default)
        # slows whichever candidate follows it; a fixed order would charge that to one candidate.
        for name, (fn, x) in rng.sample(list(candidates.items()), len(candidates)):
            start = time.perf_counter()
            _on_host(fn(x))  # waits for the result
            seconds[name].append(time.perf_counter() - start)
    return seconds


def _on_host(result):
    return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)


def keras_onnxruntime(keras_model, workdir):
    """Keras's model as a user converts it: model.export, then tf2onnx's command line; a default session."""
    saved = os.path.join(workdir, "keras_savedmodel")
    keras_model.export(saved, verbose=False)
    path = os.path.join(workdir, "keras.onnx")
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved, "--output", path,
                    "--opset", str(OPSET)], check=True, capture_output=True)
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def latency_candidates(variant, overrides, params, size, workdir) -> tuple[dict, dict, float]:
    """The timed callables and their inputs (batch 1; and ONNX Runtime's at the throughput batch size), and
    the largest difference between the probabilities of our served model and of the unoptimised one."""
    keras.utils.set_random_seed(0)
    base = with_trained_like_statistics(keras_applications_model(params, input_shape=(size, size, 3),
                                                                 classifier_activation="softmax"), 0)
    model = with_trained_like_statistics(efficientnet.build_model(variant, 1000, **overrides), 1)
    image = tf.random.uniform((1, size, size, 3), maxval=255.0)
    infer = model_runner(model, size, "tf", batch_size=1)
    unoptimised = tf.function(lambda x: tf.nn.softmax(model(x, training=False), axis=-1))
    saved_dir = os.path.join(workdir, "ours_savedmodel")
    save(ServingModule(model, [str(i) for i in range(1000)], size, 5), saved_dir)
    signatures = tf.saved_model.load(saved_dir).signatures
    max_diff = float(np.abs(infer(image) - unoptimised(image).numpy()).max())
    candidates = {
        "keras": (tf.function(lambda x: base(x, training=False)), image),
        "predict": (infer, image),
        "exported": (lambda x: signatures["serving_pixels"](images=x), image),
        "exported_uint8": (lambda x: signatures["serving_uint8"](images=x), tf.cast(image, tf.uint8)),
        "unoptimised": (unoptimised, image),
    }
    batch = {}
    if dependencies.installed(dependencies.ONNX_EXPORT + dependencies.ONNX_RUNTIME):
        keras_ort = keras_onnxruntime(base, workdir)
        ours_ort = OnnxRunner(onnx_model(model, size).SerializeToString())
        pixels = image.numpy()
        candidates["keras_onnxruntime"] = (keras_ort, pixels)
        candidates["onnxruntime"] = (ours_ort, pixels)
        many = np.random.default_rng(0).uniform(0, 255, (THROUGHPUT_BATCH.value, size, size, 3)).astype(np.float32)
        batch = {"keras_onnxruntime": (keras_ort, many), "onnxruntime": (ours_ort, many),
                 "predict": (model_runner(model, size, "tf", batch_size=len(many)), many)}
        max_diff = max(max_diff, float(np.abs(ours_ort(pixels) - unoptimised(image).numpy()).max()))
    else:
        print("ONNX Runtime rows left out: pip install -r requirements-export.txt -c constraints.txt")
    return candidates, batch, max_diff


def training_throughputs(variant, overrides, params, size) -> tuple[float, float]:
    """img/s of Keras's fit step and of ours, round-robin (the steps are freed on return)."""
    with tempfile.TemporaryDirectory() as model_dir:
        keras_step = keras_fit_step(params, size, BATCH.value)
        our_step = our_train_step(variant, overrides, size, BATCH.value, model_dir)
        seconds = round_robin({"keras": (lambda _: keras_step(), None), "ours": (lambda _: our_step(), None)},
                              STEPS.value, WARMUP.value)
    return tuple(BATCH.value * STEPS.value / sum(seconds[k]) for k in ("keras", "ours"))


def main(argv):
    del argv
    v, size = VARIANT.value, IMAGE_SIZE.value
    try:
        overrides = parse_overrides(MPARAMS.value)
        if "num_classes" in overrides:
            raise ValueError("--mparams num_classes: both networks have ImageNet's 1000 classes here")
        params = params_for(v, **overrides)  # the network of both sides, as Keras Applications builds it
        check_keras_architecture("--mparams", params, any_coefficients=True)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    host_memory.keep_freed_memory()  # both sides run in this process, as train.py and evaluate.py would
    load_before = os.getloadavg()
    base_train, our_train = training_throughputs(v, overrides, params, size)
    keras.backend.clear_session()
    with tempfile.TemporaryDirectory() as workdir:
        candidates, batch, max_diff = latency_candidates(v, overrides, params, size, workdir)
        lat = {name: latency_percentiles(s) for name, s in round_robin(candidates, LATENCY_CALLS.value, 5).items()}
        batch_seconds = round_robin(batch, THROUGHPUT_CALLS.value, 2)
    rows = [("training img/s (higher is better)", base_train, our_train, ">= 1.3")]
    for name, what, goal in (("predict", "predict.py path", "<= 0.7"),
                             ("exported", "exported SavedModel, serving_pixels", "<= 0.7"),
                             ("exported_uint8", "exported SavedModel, serving_uint8 (+ crop, resize)", ""),
                             ("unoptimised", "our unoptimised model (reference)", "")):
        for pct in ("50", "99"):
            rows.append((f"batch-1 latency p{pct} ms, {what}", lat["keras"][f"latency_{pct}pct"],
                         lat[name][f"latency_{pct}pct"], goal if pct == "99" else ""))
    if batch:
        # Baseline column here: Keras's model in ONNX Runtime.
        for pct in ("50", "99"):
            rows.append((f"batch-1 latency p{pct} ms, ONNX Runtime: our model.onnx vs Keras's",
                         lat["keras_onnxruntime"][f"latency_{pct}pct"], lat["onnxruntime"][f"latency_{pct}pct"],
                         "<= 1.0"))
        n = THROUGHPUT_BATCH.value
        img_s = {k: n * len(v) / sum(v) for k, v in batch_seconds.items()}
        rows.append((f"batch-{n} img/s, ONNX Runtime: our model.onnx vs Keras's (higher is better)",
                     img_s["keras_onnxruntime"], img_s["onnxruntime"], ">= 1.0"))
        for pct in ("50", "99"):
            rows.append((f"batch-1 latency p{pct} ms, predict.py path (TensorFlow) vs Keras's model in ONNX Runtime",
                         lat["keras_onnxruntime"][f"latency_{pct}pct"], lat["predict"][f"latency_{pct}pct"], ""))
        rows.append((f"batch-{n} img/s, predict.py path (TensorFlow) vs Keras's model in ONNX Runtime (higher is "
                     "better)", img_s["keras_onnxruntime"], img_s["predict"], ""))
    network = f"EfficientNet-{v.upper()}" + (f" with --mparams {MPARAMS.value}" if overrides else "")
    print(f"\n{network} at {size} px, fp32, training batch {BATCH.value}, on "
          f"{'GPU' if tf.config.list_logical_devices('GPU') else f'CPU ({os.cpu_count()} cores)'}; "
          f"load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
          f"{LATENCY_CALLS.value} latency calls per candidate")
    print("| measure | Keras baseline | ours | ours / baseline | goal |\n|---|---:|---:|---:|---|")
    for name, base, mine, goal in rows:
        print(f"| {name} | {base:.2f} | {mine:.2f} | {mine / base:.2f} | {goal} |")
    print(f"Largest difference of served and unoptimised probabilities: {max_diff:.2e}")


if __name__ == "__main__":
    app.run(main)
