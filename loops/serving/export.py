"""export.py's work: a checkpoint's inference form written as a SavedModel, ONNX and/or TFLite files, each
run by its own runtime on evaluation images and compared with the unexported model before anything is put
in place.

Everything is written into a hidden sibling directory of --output first; only when every artifact has
passed its self-check is that directory renamed to --output (a rename on one filesystem: nobody sees a
half-written export). A failed check removes it and raises ExportCheckError.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

import input as data
from loops.restore import display_class_names, restore_served
from loops.serving import checking, dependencies, runtimes
from loops.serving.keras_weights import KERAS_FILE, KerasApplicationsRunner, load_with, write_keras_weights
from loops.serving.config import EXPORT_REQUIREMENTS, ExportConfig
from loops.serving.savedmodel_export import OUTPUTS, SIGNATURES, ServingModule, save

class ExportCheckError(ValueError):
    """An artifact disagreed with the unexported model beyond the allowed bounds."""


@dataclasses.dataclass
class Artifact:
    name: str  # savedmodel, onnx, tflite_fp32, ...
    path: str  # relative to the export directory ("." for the SavedModel)
    backend: str
    input: str
    output: str
    check: dict | None = None
    eval_top1: float | None = None


def default_formats() -> tuple[str, ...]:
    """savedmodel, plus onnx when its converter and runtime are installed."""
    onnx = dependencies.installed(dependencies.ONNX_EXPORT + dependencies.ONNX_RUNTIME)
    return ("savedmodel", "onnx") if onnx else ("savedmodel",)


def _require_dependencies(formats: tuple[str, ...]):
    if "onnx" in formats:
        dependencies.require(dependencies.ONNX_EXPORT + dependencies.ONNX_RUNTIME, "--format onnx")
    if "tflite" in formats:
        dependencies.require(dependencies.TFLITE_RUNTIME, "--format tflite (its self-check)")


def _pixels_input(size: int) -> str:
    return f"images float32 [N, {size}, {size}, 3], pixels in [0, 255], already centre-cropped and resized"


def _write(cfg: ExportConfig, formats, restored, work: str, size: int, info: data.DatasetInfo,
           data_cfg: data.DataConfig, preprocessing: data.Preprocessing, meta: dict) -> list[Artifact]:
    model, spec = restored.model, restored.spec
    pixels, probs = _pixels_input(size), f"probabilities float32 [N, {spec.num_classes}]"
    artifacts = []
    if "savedmodel" in formats:
        module = ServingModule(model, meta["class_names"], size, cfg.top_k, preprocessing)
        save(module, work)
        artifacts.append(Artifact("savedmodel", ".", "tf", "; ".join(f"{k}({v})" for k, v in SIGNATURES.items()),
                                  ", ".join(OUTPUTS)))
    if "onnx" in formats:
        from loops.serving.onnx_export import onnx_model

        proto = onnx_model(model, size, metadata=meta)
        with open(os.path.join(work, runtimes.ONNX_FILE), "wb") as f:
            f.write(proto.SerializeToString())
        artifacts.append(Artifact("onnx", runtimes.ONNX_FILE, "onnxruntime", pixels, probs))
    if "tflite" in formats:
        from loops.serving.tflite_export import tflite_model

        calibration = None
        if "int8" in cfg.tflite_precisions:
            images = checking.sample_images(info, data_cfg, split="train", count=cfg.calibration_steps,
                                            preprocess=preprocessing,
                                            image_size=size)
            print(f"int8 calibration: {len(images)} training images of {info.description}", flush=True)
            calibration = lambda: iter(images)  # noqa: E731
        for precision in dict.fromkeys(cfg.tflite_precisions):
            name = runtimes.tflite_file(precision)
            with open(os.path.join(work, name), "wb") as f:
                f.write(tflite_model(model, size, precision, calibration))
            artifacts.append(Artifact(f"tflite_{precision}", name, "tflite", pixels, probs))
    if "keras" in formats:
        write_keras_weights(model, os.path.join(work, KERAS_FILE), cfg.ckpt)
        artifacts.append(Artifact("keras", KERAS_FILE, "keras", f"{pixels} (load with "
                                  f"{load_with(spec.variant, spec.num_classes, KERAS_FILE)})",
                                  f"logits float32 [N, {spec.num_classes}]"))
    return artifacts


def _runner(artifact: Artifact, work: str, meta: dict):
    path = os.path.join(work, artifact.path)
    if artifact.backend == "keras":
        return KerasApplicationsRunner(path, meta["model"].split("-")[-1], meta["num_classes"], meta["image_size"])
    return runtimes.open_artifact(path, artifact.backend)


def _self_check(artifact: Artifact, work: str, images: np.ndarray, reference: np.ndarray, cfg: ExportConfig,
                meta: dict):
    """Runs the artifact in its own runtime on `images`; returns (runner, passed)."""
    runner = _runner(artifact, work, meta)
    result = checking.agreement(checking.batched(runner, images), reference)
    quantized = artifact.name in ("tflite_fp16", "tflite_int8")
    if quantized:
        passed = result.top1_agreement >= cfg.min_quantized_agreement
        bound = f"top-1 agreement >= {cfg.min_quantized_agreement:g} (--min_quantized_agreement)"
    else:
        passed = result.max_probability_difference <= cfg.max_probability_difference
        bound = f"probability difference <= {cfg.max_probability_difference:g} (--max_probability_difference)"
    artifact.check = {**result.as_dict(), "runtime": runner.description, "passed": passed, "bound": bound}
    print(f"self-check {artifact.name} ({artifact.path}, {runner.description}): top-1 agreement "
          f"{result.top1_agreement:.2%} on {result.images} images, largest probability difference "
          f"{result.max_probability_difference:.2e}: {'ok' if passed else 'FAILED, needs ' + bound}", flush=True)
    return runner, passed


def export(cfg: ExportConfig) -> dict:
    """Writes the requested artifacts and export_info.json to cfg.output; returns that info."""
    formats = tuple(dict.fromkeys(cfg.formats)) or default_formats()
    _require_dependencies(formats)
    output = os.path.normpath(os.path.abspath(cfg.output))
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not cfg.overwrite:
        raise FileExistsError(f"--output {cfg.output} exists and is not empty (pass --overwrite to replace it)")
    restored, weights = restore_served(cfg.ckpt, cfg.weights)
    spec = restored.spec
    size = cfg.img_size or spec.eval_img_size
    data_cfg = cfg.data
    info = data.open_dataset(data_cfg)
    preprocessing = spec.preprocessing.with_eval_overrides(cfg.preprocess)
    meta = {"checkpoint": restored.checkpoint_path, "model": f"efficientnet-{spec.variant}",
            "num_classes": spec.num_classes, "class_names": list(display_class_names(spec)), "weights": weights,
            "image_size": size, "resize_method": preprocessing.interpolation,
            "eval_crop_fraction": preprocessing.eval_fraction(size), "preprocessing": dataclasses.asdict(preprocessing),
            "top_k": min(cfg.top_k, spec.num_classes)}
    print(f"Exporting {meta['model']} ({weights} weights, {size} px) as {', '.join(formats)}"
          + ("" if cfg.formats else f" (the default; onnx needs {EXPORT_REQUIREMENTS})"), flush=True)

    os.makedirs(os.path.dirname(output), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=os.path.dirname(output))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp's 0700 would follow the rename: a model server could not read it
    try:
        artifacts = _write(cfg, formats, restored, work, size, info, data_cfg, preprocessing, meta)
        images = checking.sample_images(info, data_cfg, split="eval", count=cfg.check_images, image_size=size,
                                        preprocess=preprocessing)
        reference = checking.model_probabilities(restored.model, images)
        runners, failed = {}, []
        for artifact in artifacts:
            runners[artifact.name], passed = _self_check(artifact, work, images, reference, cfg, meta)
            if not passed:
                failed.append(artifact.name)
        if failed:
            raise ExportCheckError(f"{', '.join(failed)} failed the self-check against the unexported model "
                                   f"(see above); nothing was written to {cfg.output}")
        result = {**meta, "formats": list(formats), "check_data": info.description}
        if cfg.eval:
            result["eval"] = _evaluate(restored.model, size, runners, artifacts, info, data_cfg, preprocessing)
        result["artifacts"] = {a.name: dataclasses.asdict(a) for a in artifacts}
        with open(os.path.join(work, runtimes.EXPORT_INFO), "w") as f:
            json.dump(result, f, indent=1)
        _put_in_place(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["output"] = cfg.output
    return result


def _evaluate(model, size, runners, artifacts, info, data_cfg, preprocessing) -> dict:
    """Top-1 over the evaluation set of the unexported model and of every artifact."""
    results = {"data": info.description}
    print(f"Evaluating on {info.description}:", flush=True)
    for name, fn in [("unexported model", lambda x: checking.model_probabilities(model, x))] + list(runners.items()):
        top1, count = checking.top1_on_eval_set(fn, info, data_cfg, size, preprocessing)
        results[name] = top1
        results["images"] = count
        print(f"eval top-1 {name}: {top1:.4f} ({count} images)", flush=True)
    for a in artifacts:
        a.eval_top1 = results[a.name]
    return results


def _put_in_place(work: str, output: str):
    """Renames the finished export to `output`, replacing an existing one only once the new one is complete."""
    if os.path.exists(output):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.old-", dir=os.path.dirname(output))
        os.rename(output, os.path.join(old, "export"))
        os.rename(work, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(work, output)
