"""Our training step and inference against Keras Applications' EfficientNet run the usual Keras way, in one
command, on the same synthetic batches, so the ratios hold on whatever machine runs it.

    .venv/bin/python scripts/compare_with_keras.py [--variant b0] [--image_size 224] [--batch_size 32]

Baselines: `keras.applications.EfficientNetB0` + `compile` + `fit` (RMSprop, label-smoothed cross-entropy) for
training, and a `tf.function` call of the same Keras model at batch 1 for latency. Ours: the training and
inference benchmark modes of train.py (loops/benchmark.py). Ours does more per step than the baseline: the
L2 penalty over all conv/dense weights and the EMA update of every weight.
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

from loops.benchmark import BenchmarkConfig, run_benchmark  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.distribution import Engine  # noqa: E402
from loops.evaluation import latency_percentiles  # noqa: E402

VARIANT = flags.DEFINE_enum("variant", "b0", ["b0", "b1", "b2", "b3"], "EfficientNet variant.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input size.")
BATCH = flags.DEFINE_integer("batch_size", 32, "Training batch size.")
STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps per side.")
WARMUP = flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (tracing, allocator growth).")
LATENCY_CALLS = flags.DEFINE_integer("latency_calls", 100, "Timed batch-1 inference calls per side.")


def keras_fit_throughput(variant, size, batch, steps, warmup) -> float:
    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    model = build(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    model.compile(optimizer=keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    x = tf.random.uniform((batch, size, size, 3), maxval=255.0)
    y = tf.one_hot(tf.random.uniform((batch,), maxval=1000, dtype=tf.int32), 1000)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def keras_call_latency(variant, size, calls) -> dict:
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, f"EfficientNet{variant.upper()}")(weights=None, input_shape=(size, size, 3))
    call = tf.function(lambda images: model(images, training=False))
    image = tf.random.uniform((1, size, size, 3), maxval=255.0)
    for _ in range(5):
        call(image).numpy()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call(image).numpy()
        seconds.append(time.perf_counter() - start)
    return latency_percentiles(seconds)


def ours(mode, variant, size, batch, steps, warmup) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BenchmarkConfig(train=TrainConfig(model_dir=tmp, variant=variant, num_classes=1000),
                              mode=mode, batch_sizes=(batch,), precisions=("fp32",), image_size=size,
                              steps=steps, warmup_steps=warmup)
        engine = Engine(tf.distribute.OneDeviceStrategy("/cpu:0" if not tf.config.list_logical_devices("GPU")
                                                        else "/gpu:0"), "one_device")
        return run_benchmark(cfg, engine)["results"][0]


def main(argv):
    del argv
    v, size = VARIANT.value, IMAGE_SIZE.value
    base_train = keras_fit_throughput(v, size, BATCH.value, STEPS.value, WARMUP.value)
    our_train = ours("training_benchmark", v, size, BATCH.value, STEPS.value, WARMUP.value)["throughput"]
    base_lat = keras_call_latency(v, size, LATENCY_CALLS.value)
    our_lat = ours("inference_benchmark", v, size, 1, LATENCY_CALLS.value, 5)
    rows = [
        ("training img/s (higher is better)", base_train, our_train, our_train / base_train, ">= 1.3"),
        ("batch-1 latency p50 ms", base_lat["latency_50pct"], our_lat["latency_50pct"],
         our_lat["latency_50pct"] / base_lat["latency_50pct"], ""),
        ("batch-1 latency p99 ms (lower is better)", base_lat["latency_99pct"], our_lat["latency_99pct"],
         our_lat["latency_99pct"] / base_lat["latency_99pct"], "<= 0.7"),
    ]
    print(f"\nEfficientNet-{v.upper()} at {size} px, fp32, training batch {BATCH.value}, on "
          f"{'GPU' if tf.config.list_logical_devices('GPU') else f'CPU ({os.cpu_count()} cores)'}")
    print("| measure | Keras baseline | ours | ours / baseline | goal |\n|---|---:|---:|---:|---|")
    for name, base, mine, ratio, goal in rows:
        print(f"| {name} | {base:.2f} | {mine:.2f} | {ratio:.2f} | {goal} |")


if __name__ == "__main__":
    app.run(main)
