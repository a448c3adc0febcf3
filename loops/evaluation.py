"""Evaluation over a distributed, padded dataset: every example counted once, per-batch latencies kept; raw
and EMA weights alike, for train.py's periodic evaluation and evaluate.py."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

import input as data
from loops.iterators import IteratorRelease
from loops.parallel.engine import Engine

PERCENTILES = (50, 90, 95, 99)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    batch_seconds: tuple[float, ...]  # warm-up batches excluded
    batch_size: int  # global

    def metrics(self, num_devices: int, suffix: str = "") -> dict:
        m = {"eval_loss": self.loss, "eval_accuracy_top_1": self.top1, "eval_accuracy_top_5": self.top5,
             "eval_examples": self.count}
        if self.batch_seconds:
            per_second = self.batch_size * len(self.batch_seconds) / sum(self.batch_seconds)
            m.update({"avg_exp_per_second_eval": per_second,
                      "avg_exp_per_second_eval_per_GPU": per_second / num_devices,
                      "avg_time_per_exp_eval": 1000.0 * sum(self.batch_seconds)
                      / (self.batch_size * len(self.batch_seconds))})
            m.update(latency_percentiles(self.batch_seconds))
        return {f"{k}{suffix}": v for k, v in m.items()}


def latency_percentiles(seconds) -> dict:
    """True percentiles of per-batch latency in milliseconds (the reference averaged the fastest p% instead)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    out = {"latency_avg": float(ms.mean())}
    for p in PERCENTILES:
        out[f"latency_{p}pct"] = float(np.percentile(ms, p))
    return out


def evaluate(eval_step, dist_dataset, *, global_batch: int, iterator_release: IteratorRelease,
             warmup_batches: int = 2) -> EvalResult:
    """One pass over dist_dataset; its iterator is handed to iterator_release at the end."""
    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    times = []
    iterator_holder = [iter(dist_dataset)]
    for i, batch in enumerate(iterator_holder[0]):
        start = time.perf_counter()
        sums = eval_step(batch)
        sums = {k: float(v) for k, v in sums.items()}  # waits for the device
        if i >= warmup_batches:
            times.append(time.perf_counter() - start)
        for key in totals:
            totals[key] += sums[key]
    iterator_release.drop(iterator_holder)
    n = max(totals["count"], 1.0)
    return EvalResult(loss=totals["loss"] / n, top1=totals["top1"] / n, top5=totals["top5"] / n,
                      count=int(totals["count"]), batch_seconds=tuple(times), batch_size=global_batch)


def distributed_eval_dataset(engine: Engine, info: data.DatasetInfo, data_cfg: data.DataConfig, *,
                             global_batch: int, image_size: int, preprocess: data.Preprocessing):
    """The whole eval set, distributed and padded; each pass over it (raw, then EMA) reads it anew."""

    def dataset_fn(ctx):
        ctx = engine.input_context(ctx)
        return data.eval_dataset(info, data_cfg, batch_size=ctx.get_per_replica_batch_size(global_batch),
                                 image_size=image_size, input_context=ctx, preprocess=preprocess)

    return engine.strategy.distribute_datasets_from_function(dataset_fn)


def evaluate_weights(engine: Engine, dataset, eval_step, *, global_batch: int, iterator_release: IteratorRelease,
                     ema=None) -> dict:
    """The model's weights (or, given `ema`, its EMA shadows swapped in and back) over `dataset`; metric names
    carry the suffix "_ema" for EMA."""
    if ema is not None:
        ema.swap()
    try:
        result = evaluate(eval_step, dataset, global_batch=global_batch, iterator_release=iterator_release)
    finally:
        if ema is not None:
            ema.swap()
    return result.metrics(engine.num_replicas, suffix="" if ema is None else "_ema")


def evaluate_all(engine: Engine, info: data.DatasetInfo, data_cfg: data.DataConfig, eval_step, *,
                 weights: tuple[str, ...], batch_size: int, image_size: int, preprocess: data.Preprocessing,
                 iterator_release: IteratorRelease, ema=None) -> dict:
    """Each of `weights` ("raw", "ema") under its own metric names, and, for both, which one was better.
    `batch_size` is per replica. The dataset is built once for both passes (docs/performance.md); each pass's
    iterator goes to iterator_release (its caller joins it)."""
    global_batch = batch_size * engine.num_replicas
    dataset = distributed_eval_dataset(engine, info, data_cfg, global_batch=global_batch, image_size=image_size,
                                       preprocess=preprocess)
    metrics = {}
    for which in weights:
        metrics.update(evaluate_weights(engine, dataset, eval_step, global_batch=global_batch,
                                        iterator_release=iterator_release, ema=ema if which == "ema" else None))
    if len(weights) == 2:
        best = "_ema" if metrics["eval_accuracy_top_1_ema"] > metrics["eval_accuracy_top_1"] else ""
        metrics["best_weights"] = "ema" if best else "raw"
        metrics["best_eval_accuracy_top_1"] = metrics[f"eval_accuracy_top_1{best}"]
    return metrics
