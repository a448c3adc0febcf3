"""What a model directory holds: run_spec.json (how to rebuild the model) and tf.train checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

import efficientnet
from input.config import REFERENCE, Preprocessing

RUN_SPEC = "run_spec.json"
# run_spec.json files written before the preprocessing settings existed hold only resize_method and
# eval_crop_fraction. The only run that set the fraction was the embedded demo, whose training crop was fixed
# in code then: these are the values it trained with.
_DEMO_BEFORE_SETTINGS = {"random_crop": True, "crop_area_range": (0.5, 1.0), "random_flip": False}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything evaluate.py, predict.py and export need to rebuild the trained network."""

    variant: str
    num_classes: int
    model_overrides: dict
    class_names: tuple[str, ...]
    eval_img_size: int
    # How training turned images into pixels, every setting decided; evaluation, prediction and the export
    # crop and resize as its eval side says.
    preprocessing: Preprocessing = REFERENCE

    def build_model(self) -> keras.Model:
        return efficientnet.build_model(self.variant, self.num_classes, **self.model_overrides)

    def save(self, model_dir: str):
        tf.io.gfile.makedirs(model_dir)
        path = os.path.join(model_dir, RUN_SPEC)
        tmp = path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)
        tf.io.gfile.rename(tmp, path, overwrite=True)

    @classmethod
    def load(cls, model_dir: str) -> RunSpec | None:
        path = os.path.join(model_dir, RUN_SPEC)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            raw = json.load(f)
        raw["class_names"] = tuple(raw["class_names"])
        # JSON has no tuples: per-channel overrides (input_mean=(...)) come back as lists; as they were given.
        raw["model_overrides"] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["model_overrides"].items()}
        if "preprocessing" in raw:
            raw["preprocessing"] = Preprocessing.from_json(raw["preprocessing"])
        else:
            raw["preprocessing"] = _preprocessing_before_settings(raw.pop("resize_method", "bilinear"),
                                                                  raw.pop("eval_crop_fraction", None))
        return cls(**raw)

    def check_compatible(self, other: RunSpec, model_dir: str):
        """Refuse to resume a model directory trained with another network."""
        for field in ("variant", "num_classes", "model_overrides"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                raise ValueError(
                    f"--model_dir {model_dir} holds a run with {field}={theirs!r}, but this run has "
                    f"{field}={mine!r}; its checkpoints cannot be loaded into this model. Use another "
                    "--model_dir, or the same model settings to resume.")


def _preprocessing_before_settings(resize_method: str, eval_crop_fraction: float | None) -> Preprocessing:
    """What a run_spec.json without preprocessing settings meant: the reference's crops, or the demo's."""
    if eval_crop_fraction is None:
        return dataclasses.replace(REFERENCE, resize_method=resize_method)
    return dataclasses.replace(REFERENCE, **_DEMO_BEFORE_SETTINGS, resize_method=resize_method, crop_padding=None,
                               eval_crop_fraction=eval_crop_fraction)


def make_checkpoint(model, optimizer=None, ema=None, **counters: tf.Variable) -> tf.train.Checkpoint:
    """model, optimizer (slots, step, loss scale), EMA shadows and progress counters (epoch, batch)."""
    parts = {"model": model, "optimizer": optimizer, "ema": ema, **counters}
    return tf.train.Checkpoint(**{k: v for k, v in parts.items() if v is not None})


def resolve_checkpoint(path: str) -> str:
    """A checkpoint prefix, or a directory whose latest checkpoint is meant."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {path} (expected a 'checkpoint' index file and ckpt-N files)")
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"checkpoint {path} not found (no {path}.index)")
    return path


class Saver:
    """CheckpointManager that lets only the chief write; other workers save into a throwaway directory
    because MultiWorkerMirroredStrategy's save is collective and must run everywhere."""

    def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, is_chief: bool, keep: int):
        self._tmp = None if is_chief else tempfile.mkdtemp(prefix="ckpt-worker-")
        self.manager = tf.train.CheckpointManager(checkpoint, self._tmp or model_dir, max_to_keep=keep)
        self.checkpoint = checkpoint

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        return path

    def close(self):
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
