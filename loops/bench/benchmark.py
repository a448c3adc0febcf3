"""Training and inference benchmarks on synthetic data made on the device, so the input pipeline (decoding,
augmentation) is out of the picture: what is timed is the model, the optimizer and the device.

The images come from tf.random inside the traced step, so every step draws new ones on the device with no
host-to-device copy. Training runs the real train step (loops.steps.make_train_step: loss, L2, loss scaling,
optimizer, EMA). Warm-up steps (tracing, autotuning, allocator growth) are excluded; latency percentiles are
true percentiles of per-step wall time, measured after the step's result reached the host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import keras
import numpy as np
import tensorflow as tf

import efficientnet
from efficientnet.serving import inference_model, with_trained_like_statistics
from loops.bench import profiling
from loops.config import BenchmarkSettings, TrainConfig
from loops.ema import ExponentialMovingAverage
from loops.evaluation import latency_percentiles
from loops.optimization import create_optimizer, learning_rate_schedule
from loops.parallel.engine import Engine
from loops.precision import set_precision
from loops.serving.runtimes import model_runner
from loops.steps import TrainState, make_train_step

DEFAULT_INFERENCE_BATCH_SIZES = (1, 8, 32)


def default_precisions(has_gpu: bool) -> tuple[str, ...]:
    return ("fp32", "tf32", "amp_fp16", "amp_bf16") if has_gpu else ("fp32", "amp_fp16", "amp_bf16")


class MemoryPeak:
    """Peak memory while a benchmark runs: the device allocator's peak on GPU; on CPU the process's resident
    set (host memory: weights, activations, TF runtime and all), sampled by a thread because
    getrusage's maxrss never comes down and would carry one run's peak into the next."""

    def __init__(self, gpu: str | None):
        self.gpu = gpu
        self.kind = f"{gpu} allocator peak" if gpu else "host RSS peak (process)"
        self._peak = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.gpu:
            tf.config.experimental.reset_memory_stats(self.gpu)
        else:
            import psutil

            proc = psutil.Process()
            self._peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(0.005):
                    self._peak = max(self._peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.gpu:
            self._peak = tf.config.experimental.get_memory_info(self.gpu)["peak"]
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return self._peak / 2**20


def _synthetic(strategy, batch: int, size: int, num_classes: int):
    """Per-replica random images in [0, 255] and one-hot labels, created on each replica's device when called
    inside a traced step."""

    def make(_ctx):
        images = tf.random.uniform([batch, size, size, 3], 0.0, 255.0)
        labels = tf.one_hot(tf.random.uniform([batch], 0, num_classes, tf.int32), num_classes)
        return images, labels

    return strategy.experimental_distribute_values_from_function(make)


class _SyntheticIterator:
    """What make_train_step calls next() on while tracing: the random ops land in the step's graph."""

    def __init__(self, strategy, batch, size, num_classes):
        self.args = (strategy, batch, size, num_classes)

    def __next__(self):
        return _synthetic(*self.args)


def _on_host(result):
    """Waits for a step's result: TensorFlow tensors are copied to the host; other runtimes return host arrays."""
    return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)


def _time_steps(step, bench: BenchmarkSettings, memory: MemoryPeak) -> list[float]:
    with memory:
        for _ in range(bench.warmup_steps):
            _on_host(step())
        seconds = []
        for _ in range(bench.steps):
            start = time.perf_counter()
            _on_host(step())  # waits for the device
            seconds.append(time.perf_counter() - start)
    return seconds


def _profile_steps(step, bench: BenchmarkSettings, logdir: str) -> dict:
    """`bench.steps` more steps under the TensorFlow profiler, after the timed ones so the profiler's own
    cost stays out of the table; prints and returns where the op time went (loops/bench/profiling.py)."""
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(bench.steps):
            tf.nest.map_structure(lambda t: t.numpy(), step())
    finally:
        tf.profiler.experimental.stop()
    summary = profiling.summarize(profiling.read_op_events(logdir), bench.steps)
    print(f"\nWhere the op time went (trace for TensorBoard's profile plugin: {logdir})"
          f"{profiling.format_summary(summary)}\n", flush=True)
    return {"logdir": logdir, **summary}


def training_steps(cfg: TrainConfig, engine: Engine, precision: str, num_classes: int, batch_sizes, image_size: int):
    """Yields (batch size, step) for each of batch_sizes: the real train step on synthetic batches."""
    strategy = engine.strategy
    base = dataclasses.replace(cfg, precision=precision, train_batch_size=batch_sizes[0])
    with strategy.scope():
        model = _build_model(cfg, num_classes)
        optimizer = create_optimizer(base, learning_rate_schedule(base, engine.num_replicas, 1000))
        optimizer.build(model.trainable_variables)
        ema = ExponentialMovingAverage(model, base.moving_average_decay, strategy) if base.use_ema else None
    state = TrainState(model=model, optimizer=optimizer, ema=ema, engine=engine)
    for bs in batch_sizes:
        step_cfg = dataclasses.replace(base, train_batch_size=bs, grad_accum_steps=1)
        train_step = make_train_step(state, step_cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
        iterator = _SyntheticIterator(strategy, bs, image_size, num_classes)
        yield bs, lambda: train_step(iterator)


def inference_steps(cfg: TrainConfig, engine: Engine, precision: str, num_classes: int, batch_sizes,
                    image_size: int):
    """Yields (batch size, step) for each of batch_sizes: the served network on synthetic batches."""
    strategy = engine.strategy
    with strategy.scope():
        # What predict.py and the export serve (BatchNorm folded), left as variables rather than frozen into
        # constants so it runs under any strategy and with XLA. Trained-like statistics: with the initial
        # zero biases grappler drops the bias adds, which changes what it fuses (efficientnet/serving.py).
        model = inference_model(with_trained_like_statistics(_build_model(cfg, num_classes)))
    for bs in batch_sizes:
        def replica(bs=bs):
            # Runs on each replica's device, so the random batch is made where the model runs.
            images = tf.random.uniform([bs, image_size, image_size, 3], 0.0, 255.0)
            # A few bytes back to the host are enough to know the batch is done.
            return tf.reduce_sum(tf.cast(model(images, training=False), tf.float32))

        if cfg.use_xla:
            replica = tf.function(replica, jit_compile=True, autograph=False)

        @tf.function(autograph=False)
        def step(replica=replica):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica), axis=None)

        yield bs, step


def runtime_inference_steps(cfg: TrainConfig, backend: str, num_classes: int, batch_sizes, image_size: int):
    """Yields (batch size, step) for each of batch_sizes: the served network exported for `backend`
    (onnxruntime, tflite) and run by it, on one random batch made on the host, where that runtime reads it."""
    runner = model_runner(with_trained_like_statistics(_build_model(cfg, num_classes)), image_size, backend)
    rng = np.random.default_rng(cfg.seed)
    for bs in batch_sizes:
        images = rng.uniform(0.0, 255.0, (bs, image_size, image_size, 3)).astype(np.float32)
        yield bs, lambda images=images: runner(images)


def _build_model(cfg: TrainConfig, num_classes: int) -> keras.Model:
    return efficientnet.build_model(cfg.variant, num_classes, **cfg.model_overrides)


def run_benchmark(cfg: TrainConfig, engine: Engine) -> dict:
    """Runs every (precision, batch size) of cfg.benchmark; prints one table per precision; writes and returns
    the JSON."""
    bench, training = cfg.benchmark, cfg.mode == "training_benchmark"
    gpus = tf.config.list_logical_devices("GPU")
    batch_sizes = bench.batch_sizes or ((cfg.train_batch_size,) if training else DEFAULT_INFERENCE_BATCH_SIZES)
    precisions = bench.precisions or default_precisions(bool(gpus))
    image_size = cfg.train_img_size if training else cfg.eval_img_size
    if bench.profile_dir:
        # Checked now: the profiler would only fail after the timed runs, losing their table.
        try:
            tf.io.gfile.makedirs(bench.profile_dir)
        except (tf.errors.OpError, OSError) as e:
            raise ValueError(f"--benchmark_profile_dir={bench.profile_dir}: cannot create it ({e})") from None
    memory_device = "GPU:0" if gpus else None
    num_classes = cfg.num_classes or 1000
    replicas = engine.num_replicas
    rows = []
    runs = [("tf", precision) for precision in precisions] if training or "tf" in bench.backends else []
    runs += [(backend, "fp32") for backend in bench.backends if backend != "tf" and not training]
    for backend, precision in runs:
        set_precision(precision)
        keras.utils.set_random_seed(cfg.seed)
        if backend == "tf":
            steps = (training_steps if training else inference_steps)(cfg, engine, precision, num_classes,
                                                                       batch_sizes, image_size)
        else:
            steps = runtime_inference_steps(cfg, backend, num_classes, batch_sizes, image_size)
        for bs, step in steps:
            memory = MemoryPeak(memory_device)
            seconds = _time_steps(step, bench, memory)
            lat = latency_percentiles(seconds)
            global_batch = bs * (replicas if backend == "tf" else 1)
            row = {"backend": backend, "precision": precision, "batch_size": bs, "global_batch_size": global_batch,
                   "resolution": f"{image_size}x{image_size}",
                   "throughput": global_batch * len(seconds) / float(np.sum(seconds)), **lat,
                   "peak_memory_mib": memory.mib}
            rows.append(row)
            print(f"  {cfg.mode} {BACKEND_TITLES[backend]} {precision} batch {bs}: {row['throughput']:.2f} img/s, "
                  f"avg {lat['latency_avg']:.2f} ms", flush=True)
            if bench.profile_dir and backend == "tf":
                row["profile"] = _profile_steps(step, bench, os.path.join(bench.profile_dir, f"{precision}_batch{bs}"))
        # Leaves the global policy as it was found: later code in the process builds fp32 models.
        set_precision("fp32")
        keras.backend.clear_session()
    result = {
        "mode": cfg.mode, "model": f"efficientnet-{cfg.variant}", "num_classes": num_classes,
        "device": gpus[0].name if gpus else "CPU", "replicas": replicas, "engine": engine.name,
        "xla": cfg.use_xla, "steps": bench.steps, "warmup_steps": bench.warmup_steps,
        "memory": MemoryPeak(memory_device).kind, "latency_unit": "ms per step (one batch per replica)",
        "results": rows,
    }
    if engine.is_chief:
        print(format_tables(result), flush=True)
        out = cfg.benchmark_output
        if os.path.dirname(out):
            tf.io.gfile.makedirs(os.path.dirname(out))
        with tf.io.gfile.GFile(out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"Benchmark results written to {out}", flush=True)
        result["output"] = out
    return result


BACKEND_TITLES = {"tf": "TensorFlow", "onnxruntime": "ONNX Runtime", "tflite": "TFLite (LiteRT)"}
PRECISION_TITLES = {"fp32": "FP32", "tf32": "TF32", "amp_fp16": "FP16 (AMP)", "amp_bf16": "BF16 (AMP)"}
COLUMNS = (("Batch size", "batch_size", "{}"), ("Resolution", "resolution", "{}"),
           ("Throughput (img/s)", "throughput", "{:.2f}"), ("Latency Avg (ms)", "latency_avg", "{:.2f}"),
           ("Latency 90% (ms)", "latency_90pct", "{:.2f}"), ("Latency 95% (ms)", "latency_95pct", "{:.2f}"),
           ("Latency 99% (ms)", "latency_99pct", "{:.2f}"), ("Peak memory (MiB)", "peak_memory_mib", "{:.0f}"))


def format_tables(result: dict) -> str:
    """The reference's tables (one per backend and precision) as Markdown, so they paste into docs unchanged."""
    kind = "Training" if result["mode"] == "training_benchmark" else "Inference"
    out = []
    for backend, precision in dict.fromkeys((r.get("backend", "tf"), r["precision"]) for r in result["results"]):
        replicas = result["replicas"] if backend == "tf" else 1
        out.append(f"\n{kind} performance: {result['model']} on {result['device']} x {replicas}, "
                   f"{PRECISION_TITLES[precision]}{', XLA' if result['xla'] and backend == 'tf' else ''}, "
                   f"{BACKEND_TITLES[backend]} (memory: {result['memory']})\n")
        out.append("| " + " | ".join(c[0] for c in COLUMNS) + " |")
        out.append("|" + "|".join("---:" for _ in COLUMNS) + "|")
        for r in result["results"]:
            if (r.get("backend", "tf"), r["precision"]) == (backend, precision):
                out.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in COLUMNS) + " |")
    return "\n".join(out)
