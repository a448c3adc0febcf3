"""Our training step and inference against Keras Applications' EfficientNet run the usual Keras way, in one
command, on the same synthetic batches, so the ratios hold on whatever machine runs it.

    .venv/bin/python scripts/compare_with_keras.py [--variant b0] [--image_size 224] [--batch_size 32]

Baselines: `keras.applications.EfficientNetB0` + `compile` (RMSprop, label-smoothed cross-entropy), timed by
calling the train function `fit` runs once per batch, for training; and a `tf.function` call of the same
Keras model at batch 1 for latency. Ours: the step of train.py's training benchmark (loops/bench/benchmark.py),
which does more per step than the baseline (the L2 penalty over all conv/dense weights and the EMA update of
every weight); for latency, the function predict.py calls
(loops.serving.prediction.make_infer) and the exported SavedModel loaded back with tf.saved_model.load, through its
`serving_pixels` signature (preprocessed images, like the baseline's input; it also takes the top-k) and,
end to end, through `serving_uint8` (which also crops and resizes). Our unoptimised model, called like the
baseline, is timed as a reference.

Training steps and latency calls go round-robin over the candidates, one call each in turn, so load from other
processes on a shared machine falls on all of them alike. Both networks get random BatchNorm statistics and
biases instead of their initial ones (zero means and offsets), as after training: zero biases would let
grappler drop the bias adds, which changes which ops it fuses.
"""

import os
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
from efficientnet.serving import with_trained_like_statistics  # noqa: E402
from loops.bench.benchmark import training_steps  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.parallel.distribution import Engine  # noqa: E402
from loops.evaluation import latency_percentiles  # noqa: E402
from loops.serving.export import ServingModule, save  # noqa: E402
from loops.serving.prediction import make_infer  # noqa: E402

VARIANT = flags.DEFINE_enum("variant", "b0", ["b0", "b1", "b2", "b3"], "EfficientNet variant.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input size.")
BATCH = flags.DEFINE_integer("batch_size", 32, "Training batch size.")
STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps per side.")
WARMUP = flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (tracing, allocator growth).")
LATENCY_CALLS = flags.DEFINE_integer("latency_calls", 300, "Timed batch-1 inference calls per candidate.")


def keras_fit_step(variant, size, batch):
    """Keras's compiled training step, the function Model.fit calls once per batch, on one synthetic batch."""
    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    model = build(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    model.compile(optimizer=keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    x = tf.random.uniform((batch, size, size, 3), maxval=255.0)
    y = tf.one_hot(tf.random.uniform((batch,), maxval=1000, dtype=tf.int32), 1000)
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    model.make_train_function()
    return lambda: model.train_function(iterator)


def our_train_step(variant, size, batch, model_dir):
    """Our training step as train.py's training benchmark runs it (loss, L2, RMSprop, EMA)."""
    cfg = TrainConfig(model_dir=model_dir, variant=variant, num_classes=1000, mode="training_benchmark")
    engine = Engine(tf.distribute.OneDeviceStrategy("/gpu:0" if tf.config.list_logical_devices("GPU")
                                                    else "/cpu:0"), "one_device")
    _, step = next(training_steps(cfg, engine, "fp32", 1000, (batch,), size))
    return step


def round_robin(candidates: dict, calls: int, warmup: int) -> dict:
    """{name: (fn, input)} -> {name: seconds of each timed call}, calling each candidate once per round, so
    load from other processes on a shared machine falls on all of them alike."""
    for fn, x in candidates.values():
        for _ in range(warmup):
            tf.nest.map_structure(lambda t: t.numpy(), fn(x))
    seconds = {name: [] for name in candidates}
    for _ in range(calls):
        for name, (fn, x) in candidates.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn(x))  # waits for the result
            seconds[name].append(time.perf_counter() - start)
    return seconds


def latency_candidates(variant, size, saved_dir) -> tuple[dict, float]:
    """The timed callables and their inputs, and the largest difference between the probabilities of our
    served model and of the unoptimised one."""
    keras.utils.set_random_seed(0)
    base = with_trained_like_statistics(getattr(keras.applications, f"EfficientNet{variant.upper()}")(
        weights=None, input_shape=(size, size, 3)), 0)
    model = with_trained_like_statistics(efficientnet.build_model(variant, 1000), 1)
    image = tf.random.uniform((1, size, size, 3), maxval=255.0)
    infer = make_infer(model, 1, size)
    unoptimised = tf.function(lambda x: tf.nn.softmax(model(x, training=False), axis=-1))
    save(ServingModule(model, [str(i) for i in range(1000)], size, 5), saved_dir)
    signatures = tf.saved_model.load(saved_dir).signatures
    max_diff = float(np.abs(infer(image).numpy() - unoptimised(image).numpy()).max())
    candidates = {
        "keras": (tf.function(lambda x: base(x, training=False)), image),
        "predict": (infer, image),
        "exported": (lambda x: signatures["serving_pixels"](images=x), image),
        "exported_uint8": (lambda x: signatures["serving_uint8"](images=x), tf.cast(image, tf.uint8)),
        "unoptimised": (unoptimised, image),
    }
    return candidates, max_diff


def main(argv):
    del argv
    v, size = VARIANT.value, IMAGE_SIZE.value
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as model_dir:
        steps = {"keras": keras_fit_step(v, size, BATCH.value), "ours": our_train_step(v, size, BATCH.value, model_dir)}
        train_seconds = round_robin({name: (lambda _, step=step: step(), None) for name, step in steps.items()},
                                    STEPS.value, WARMUP.value)
    base_train, our_train = (BATCH.value * STEPS.value / sum(train_seconds[k]) for k in ("keras", "ours"))
    del steps  # the training models go before the latency ones are built
    keras.backend.clear_session()
    with tempfile.TemporaryDirectory() as saved_dir:
        candidates, max_diff = latency_candidates(v, size, saved_dir)
        lat = {name: latency_percentiles(s) for name, s in round_robin(candidates, LATENCY_CALLS.value, 5).items()}
    rows = [("training img/s (higher is better)", base_train, our_train, ">= 1.3")]
    for name, what, goal in (("predict", "predict.py path", "<= 0.7"),
                             ("exported", "exported SavedModel, serving_pixels", "<= 0.7"),
                             ("exported_uint8", "exported SavedModel, serving_uint8 (+ crop, resize)", ""),
                             ("unoptimised", "our unoptimised model (reference)", "")):
        for pct in ("50", "99"):
            rows.append((f"batch-1 latency p{pct} ms, {what}", lat["keras"][f"latency_{pct}pct"],
                         lat[name][f"latency_{pct}pct"], goal if pct == "99" else ""))
    print(f"\nEfficientNet-{v.upper()} at {size} px, fp32, training batch {BATCH.value}, on "
          f"{'GPU' if tf.config.list_logical_devices('GPU') else f'CPU ({os.cpu_count()} cores)'}; "
          f"load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
          f"{LATENCY_CALLS.value} latency calls per candidate")
    print("| measure | Keras baseline | ours | ours / baseline | goal |\n|---|---:|---:|---:|---|")
    for name, base, mine, goal in rows:
        print(f"| {name} | {base:.2f} | {mine:.2f} | {mine / base:.2f} | {goal} |")
    print(f"Largest difference of served and unoptimised probabilities: {max_diff:.2e}")


if __name__ == "__main__":
    app.run(main)
