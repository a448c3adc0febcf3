"""evaluate.py's work: restore a checkpoint and evaluate its raw and/or EMA weights with the training loop's
own distributed evaluation (loops.evaluation.evaluate_all), so both report the same numbers the same way."""

from __future__ import annotations

import json
import os

import tensorflow as tf

import input as data
from loops.config import EvalConfig, weights_to_evaluate
from loops.evaluation import evaluate_all
from loops.iterators import IteratorRelease
from loops.parallel.engine import Engine
from loops.precision import set_precision
from loops.restore import restore
from loops.steps import make_eval_step

# The reference's metric names, in the order its README lists them (plus our average and median latency).
METRICS = ("eval_loss", "eval_accuracy_top_1", "eval_accuracy_top_5", "avg_exp_per_second_eval",
           "avg_exp_per_second_eval_per_GPU", "avg_time_per_exp_eval", "latency_avg", "latency_50pct",
           "latency_90pct", "latency_95pct", "latency_99pct", "eval_examples")
UNITS = {"avg_exp_per_second_eval": "img/s", "avg_exp_per_second_eval_per_GPU": "img/s",
         "avg_time_per_exp_eval": "ms", "latency_avg": "ms per batch", "latency_50pct": "ms per batch",
         "latency_90pct": "ms per batch", "latency_95pct": "ms per batch", "latency_99pct": "ms per batch"}


def evaluate_checkpoint(cfg: EvalConfig, engine: Engine) -> dict:
    """Returns the flat metrics dict (raw names, `_ema` suffix for EMA) plus what was evaluated; writes it
    as JSON (chief only) and returns the path under "results_json"."""
    set_precision(cfg.precision)
    restored = restore(cfg.ckpt, engine.strategy, with_ema=cfg.weights != "raw")
    spec = restored.spec
    weights = cfg.weights
    if not restored.has_ema:
        if weights == "ema":
            raise ValueError(f"--weights=ema, but checkpoint {restored.checkpoint_path} holds no EMA weights "
                             f"(trained with --moving_average_decay=0); use --weights=raw")
        if weights == "both":
            print(f"Checkpoint {restored.checkpoint_path} holds no EMA weights; evaluating the raw ones only.",
                  flush=True)
            weights = "raw"
    image_size = cfg.eval_img_size or spec.eval_img_size
    preprocessing = spec.preprocessing.with_eval_overrides(cfg.preprocess)
    info = data.open_dataset(cfg.data)
    if info.num_classes > spec.num_classes:
        raise ValueError(f"{info.description} has {info.num_classes} classes but the checkpoint's model has "
                         f"{spec.num_classes} outputs; is --data_dir the dataset it was trained on?")
    iterator_release = IteratorRelease()
    try:
        metrics = evaluate_all(engine, info, cfg.data, make_eval_step(restored.model, engine),
                               weights=weights_to_evaluate(weights), batch_size=cfg.eval_batch_size,
                               image_size=image_size, ema=restored.ema, preprocess=preprocessing,
                               iterator_release=iterator_release)
    finally:
        iterator_release.join()
    results = {"checkpoint": restored.checkpoint_path, "model": f"efficientnet-{spec.variant}",
               "data": info.description, "weights": weights, "eval_img_size": image_size,
               "eval_crop_fraction": preprocessing.eval_fraction(image_size),
               "resize_method": preprocessing.interpolation,
               "eval_batch_size": cfg.eval_batch_size, "replicas": engine.num_replicas, "precision": cfg.precision,
               **metrics}
    if engine.is_chief:
        out = cfg.output or os.path.join(restored.model_dir,
                                         f"eval-{os.path.basename(restored.checkpoint_path)}.json")
        if os.path.dirname(out):
            tf.io.gfile.makedirs(os.path.dirname(out))
        with tf.io.gfile.GFile(out, "w") as f:
            json.dump(results, f, indent=1)
        results["results_json"] = out
    return results


def print_results(results: dict):
    """What evaluate.py (and loops.average_checkpoints) print: the table and where the JSON went."""
    print(results_table(results))
    print(f"Results written to {results['results_json']}")


def results_table(results: dict) -> str:
    """One row per metric, one column per evaluated weight set."""
    columns = [("raw", "")] if results["weights"] in ("raw", "both") else []
    if results["weights"] in ("ema", "both"):
        columns.append(("ema", "_ema"))
    rows = [("metric", *(c for c, _ in columns), "unit")]
    for name in METRICS:
        if f"{name}{columns[0][1]}" not in results:
            continue
        cells = []
        for _, suffix in columns:
            v = results[f"{name}{suffix}"]
            cells.append(f"{v:.5f}" if isinstance(v, float) else str(v))
        rows.append((name, *cells, UNITS.get(name, "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"Evaluation of {results['checkpoint']} ({results['model']}, {results['eval_img_size']} px, "
             f"batch {results['eval_batch_size']} x {results['replicas']} replica(s), {results['precision']})"]
    for k, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 or i == len(r) - 1 else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    if "best_weights" in results:
        lines.append(f"  best: {results['best_weights']} weights, top-1 {results['best_eval_accuracy_top_1']:.5f}")
    return "\n".join(lines)
