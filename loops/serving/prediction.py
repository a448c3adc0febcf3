"""predict.py's work: image files -> top-k class names and probabilities, in file order, from a checkpoint
(run by TensorFlow, or converted in memory for ONNX Runtime or LiteRT) or from an export's artifact.

Images go through input.preprocess_for_eval (the evaluation centre crop and resize), decoded in parallel by
tf.data. A file that does not decode is dropped there (ignore_errors) and noticed by its missing index, then
decoded once more on its own to name the error; the other files are still predicted.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import time

import numpy as np
import tensorflow as tf

import input as data
from loops.evaluation import latency_percentiles
from loops.precision import set_precision
from loops.restore import display_class_names, restore_served
from loops.serving import dependencies, runtimes
from loops.serving.config import TFLITE_PRECISIONS, PredictConfig

@dataclasses.dataclass
class PredictResult:
    rows: list[dict]  # one per file, in file order: {"file", "top_k": [...]} or {"file", "error"}
    metrics: dict  # images, images_per_second, latency_* (ms per batch)
    weights: str
    output: str | None
    runtime: str  # e.g. "ONNX Runtime 1.32.0"
    source: str  # the checkpoint or artifact that ran

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.rows if "error" in r]


def list_images(cfg: PredictConfig) -> list[str]:
    """--image, or every non-hidden file under --image_dir in sorted path order (non-images included, so
    they are reported rather than silently passed over)."""
    if cfg.image is not None:
        if not os.path.isfile(cfg.image):
            raise FileNotFoundError(f"--image {cfg.image} does not exist or is not a file")
        return [cfg.image]
    if not os.path.isdir(cfg.image_dir):
        raise FileNotFoundError(f"--image_dir {cfg.image_dir} does not exist or is not a directory")
    files = []
    for root, dirs, names in os.walk(cfg.image_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in names if not n.startswith(".")]
    if not files:
        raise FileNotFoundError(f"--image_dir {cfg.image_dir} holds no files to predict")
    return sorted(files)


def _decode_error(path: str, image_size: int, preprocessing: data.Preprocessing) -> str:
    try:
        data.preprocess_for_eval(tf.io.read_file(path), image_size, preprocessing)
    except (tf.errors.OpError, ValueError) as e:
        text = (getattr(e, "message", None) or str(e)).strip()
        # Drop TensorFlow's "{{function_node ...}}" prefix and "[Op:...]" suffix: the op name is noise here.
        text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text))
        return text.splitlines()[0] if text else type(e).__name__
    return "could not be decoded"


@dataclasses.dataclass
class Served:
    """What predict.py runs and how images must reach it."""

    runner: object  # images float32 [N, S, S, 3] -> probabilities [N, C] (loops.serving.runtimes)
    class_names: tuple[str, ...]
    image_size: int
    preprocessing: data.Preprocessing  # the evaluation crop and resize the images get
    weights: str
    source: str  # the checkpoint or artifact file


def _export_info(path: str) -> tuple[str, dict]:
    """(export directory, its export_info.json) of --model: the directory itself or a file in it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--model {path} does not exist")
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    info_path = os.path.join(directory, runtimes.EXPORT_INFO)
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"--model {path}: no {runtimes.EXPORT_INFO} in {directory}; pass a directory "
                                f"written by export.py or a file inside one")
    with open(info_path) as f:
        return directory, json.load(f)


def _artifact_file(path: str, directory: str, backend: str | None) -> tuple[str, str]:
    """(file or SavedModel directory to open, backend) for --model and --backend."""
    if os.path.isfile(path):
        by_suffix = {".onnx": "onnxruntime", ".tflite": "tflite"}
        found = by_suffix.get(os.path.splitext(path)[1])
        if found is None or backend not in (None, found):
            raise ValueError(f"--model {path}: runs with --backend {found or 'tf (pass its directory)'}, "
                             f"not {backend}")
        return path, found
    present = {"onnxruntime": os.path.isfile(os.path.join(directory, runtimes.ONNX_FILE)),
               "tf": os.path.isfile(os.path.join(directory, runtimes.SAVED_MODEL_FILE)),
               "tflite": bool(_tflite_files(directory))}
    if backend is None:
        onnx_ready = present["onnxruntime"] and dependencies.installed(dependencies.ONNX_RUNTIME)
        backend = "onnxruntime" if onnx_ready else "tf" if present["tf"] else next(
            (b for b, ok in present.items() if ok), "tf")
    if not present[backend]:
        raise FileNotFoundError(f"--model {path} holds no artifact for --backend {backend} "
                                f"(export it with export.py --format {'savedmodel' if backend == 'tf' else backend})")
    files = {"onnxruntime": runtimes.ONNX_FILE, "tf": ".", "tflite": (_tflite_files(directory) or [""])[0]}
    return os.path.normpath(os.path.join(directory, files[backend])), backend


def _tflite_files(directory: str) -> list[str]:
    """The TFLite files of an export, most exact first."""
    return [runtimes.tflite_file(p) for p in TFLITE_PRECISIONS
            if os.path.isfile(os.path.join(directory, runtimes.tflite_file(p)))]


def open_served(cfg: PredictConfig) -> Served:
    """--model (an export) or --ckpt, in the runtime --backend names."""
    if cfg.backend is not None:  # checked before a checkpoint is restored or an artifact opened
        dependencies.require(dependencies.for_backend(cfg.backend, converting=cfg.model is None),
                             f"--backend {cfg.backend}")
    if cfg.model is not None:
        directory, info = _export_info(cfg.model)
        path, backend = _artifact_file(cfg.model, directory, cfg.backend)
        runner = runtimes.open_artifact(path, backend)
        recorded = data.Preprocessing.from_json(info["preprocessing"])
        return Served(runner, tuple(info["class_names"]), info["image_size"],
                      recorded.with_eval_overrides(cfg.preprocess), info["weights"], path)
    set_precision(cfg.precision)
    restored, weights = restore_served(cfg.ckpt, cfg.weights)
    spec, model = restored.spec, restored.model
    size = cfg.img_size or spec.eval_img_size
    # --backend tf: one traced shape, since predict pads every batch to it.
    runner = runtimes.model_runner(model, size, cfg.backend or "tf", cfg.batch_size)
    return Served(runner, display_class_names(spec), size, spec.preprocessing.with_eval_overrides(cfg.preprocess),
                  weights, restored.checkpoint_path)


def predict(cfg: PredictConfig) -> PredictResult:
    files = list_images(cfg)
    served = open_served(cfg)
    names, size, preprocessing = served.class_names, served.image_size, served.preprocessing
    k = min(cfg.top_k, len(names))
    bs = cfg.batch_size

    paths = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string)).enumerate()
    images = paths.map(tf.autograph.experimental.do_not_convert(
        lambda i, p: (i, data.preprocess_for_eval(tf.io.read_file(p), size, preprocessing))),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = images.ignore_errors().batch(bs).prefetch(2)

    # Every batch is padded to one shape, so this one warm-up call pays for all tracing and allocation.
    served.runner(np.zeros([bs, size, size, 3], np.float32))
    probs_by_index: dict[int, np.ndarray] = {}
    seconds = []
    for idx, imgs in batches:
        n = int(idx.shape[0])
        imgs = imgs.numpy()
        if n < bs:
            imgs = np.concatenate([imgs, np.zeros([bs - n, size, size, 3], imgs.dtype)])
        start = time.perf_counter()
        probs = served.runner(imgs)  # a host array: the runtime has finished
        seconds.append(time.perf_counter() - start)
        for j, i in enumerate(idx.numpy()):
            probs_by_index[int(i)] = probs[j]

    rows = []
    for i, path in enumerate(files):
        if i not in probs_by_index:
            rows.append({"file": path, "error": _decode_error(path, size, preprocessing)})
            continue
        p = probs_by_index[i]
        top = np.argsort(-p, kind="stable")[:k]
        rows.append({"file": path, "top_k": [{"class_id": int(c), "class_name": names[c],
                                              "probability": float(p[c])} for c in top]})
    n_ok = len(probs_by_index)
    metrics = {"images": n_ok, "failed": len(files) - n_ok, "batch_size": bs, "image_size": size}
    if seconds:
        metrics["images_per_second"] = n_ok / sum(seconds)
        metrics.update(latency_percentiles(seconds))
    if cfg.output:
        write_rows(rows, cfg.output)
    return PredictResult(rows=rows, metrics=metrics, weights=served.weights, output=cfg.output,
                         runtime=served.runner.description, source=served.source)


def write_rows(rows: list[dict], path: str):
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.lower().endswith(".csv"):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "rank", "class_id", "class_name", "probability", "error"])
            for r in rows:
                if "error" in r:
                    w.writerow([r["file"], "", "", "", "", r["error"]])
                for rank, t in enumerate(r.get("top_k", []), 1):
                    w.writerow([r["file"], rank, t["class_id"], t["class_name"], f"{t['probability']:.6f}", ""])
    else:
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def format_rows(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['file']}: ERROR (not an image TensorFlow can decode): {r['error']}")
        else:
            top = ", ".join(f"{t['class_name']} ({t['class_id']}) {t['probability']:.4f}" for t in r["top_k"])
            lines.append(f"{r['file']}: {top}")
    return "\n".join(lines)


def format_metrics(metrics: dict) -> str:
    if "images_per_second" not in metrics:
        return f"No image was predicted ({metrics['failed']} failed)."
    return (f"{metrics['images']} images ({metrics['failed']} failed), batch {metrics['batch_size']}, "
            f"{metrics['image_size']} px: {metrics['images_per_second']:.2f} img/s; latency per batch (ms) "
            f"avg {metrics['latency_avg']:.2f}, p50 {metrics['latency_50pct']:.2f}, "
            f"p90 {metrics['latency_90pct']:.2f}, p95 {metrics['latency_95pct']:.2f}, "
            f"p99 {metrics['latency_99pct']:.2f}")
