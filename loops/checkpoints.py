"""What a model directory holds: run_spec.json (how to rebuild the model), tf.train checkpoints (the latest
ones, `ckpt-<step>`, and the best ones by evaluation, `best-<step>`), and how to read them when one is damaged."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Callable

import keras
import tensorflow as tf

import efficientnet
from input.config import REFERENCE, Preprocessing

RUN_SPEC = "run_spec.json"
# run_spec.json files written before the preprocessing settings existed hold only resize_method and
# eval_crop_fraction. The only run that set the fraction was the embedded demo, whose training crop was fixed
# in code then: these are the values it trained with.
_DEMO_BEFORE_SETTINGS = {"random_crop": True, "crop_area_range": (0.5, 1.0), "random_flip": False}

BEST_RECORD = "best_checkpoints.json"
# What reading a damaged checkpoint raises: a truncated data file IndexError("Read less bytes than requested"),
# a flipped bit DataLossError (tensor checksums) or another OpError (index table checksums, a missing file).
READ_ERRORS = (tf.errors.OpError, IndexError)


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


class DamagedCheckpoint(ValueError):
    """A checkpoint whose files cannot be read; the message names the file and fits on one line."""


def _one_line(error: BaseException) -> str:
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error))  # TensorFlow's op-wrapper prefix
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def damaged_file(prefix: str) -> str:
    """Which file of an unreadable checkpoint is at fault: its .index when that does not open, else its data."""
    try:
        tf.train.list_variables(prefix)
    except READ_ERRORS:
        return prefix + ".index"
    data = sorted(tf.io.gfile.glob(prefix + ".data-*"))
    return data[0] if len(data) == 1 else prefix + ".data-*"


def damage_report(prefix: str, error: BaseException) -> str:
    return f"checkpoint {prefix} is damaged ({damaged_file(prefix)}: {_one_line(error)})"


def read_checkpoint(checkpoint: tf.train.Checkpoint, prefix: str):
    """checkpoint.restore(prefix), raising DamagedCheckpoint naming the file when it cannot be read. Only the
    tensors of `checkpoint`'s objects are read (and checksummed): damage elsewhere in the file goes unnoticed."""
    try:
        return checkpoint.restore(prefix)
    except READ_ERRORS as e:
        raise DamagedCheckpoint(damage_report(prefix, e)) from None


def kept_checkpoints(model_dir: str) -> list[str]:
    """The checkpoints the `checkpoint` state file of model_dir lists, oldest first."""
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return []
    return list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]


def restore_newest_intact(checkpoint: tf.train.Checkpoint, model_dir: str, *, set_aside: bool,
                          say: Callable[[str], None]) -> str | None:
    """Restores the newest kept checkpoint of model_dir that reads completely; None when there is none at all.

    A damaged one is reported, and with `set_aside` (the writer of model_dir) its files are renamed to
    *.damaged and it is dropped from the state file, so later saves neither list nor overwrite it. Raises
    DamagedCheckpoint when every kept checkpoint is damaged.
    """
    kept = kept_checkpoints(model_dir)
    damaged = []
    for prefix in reversed(kept):
        try:
            read_checkpoint(checkpoint, prefix).assert_existing_objects_matched()
        except DamagedCheckpoint as e:
            damaged.append(prefix)
            say(f"Warning: {str(e)[0].upper()}{str(e)[1:]}; trying the one before it.")
            continue
        if damaged:
            if set_aside:
                _set_aside(damaged, model_dir, intact=prefix, kept=kept)
            say(f"Falling back to {prefix}, the newest intact checkpoint: the steps after it are trained again"
                + ("; the damaged files were renamed to *.damaged" if set_aside else ""))
        return prefix
    if damaged:
        raise DamagedCheckpoint(f"--model_dir {model_dir}: every kept checkpoint is damaged ("
                                f"{', '.join(os.path.basename(p) for p in damaged)}); move them and the "
                                "'checkpoint' file elsewhere to train from the start")
    return None


def _set_aside(damaged: list[str], model_dir: str, *, intact: str, kept: list[str]):
    for prefix in damaged:
        for path in tf.io.gfile.glob(prefix + ".*"):
            if not path.endswith(".damaged"):
                tf.io.gfile.rename(path, path + ".damaged", overwrite=True)
    tf.compat.v1.train.update_checkpoint_state(model_dir, intact,
                                               all_model_checkpoint_paths=[p for p in kept if p not in damaged])


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
        self.directory = self._tmp or model_dir

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        return path

    def write(self, name: str) -> str:
        """The checkpoint as model_dir/name, outside the kept-latest rotation (other workers: the throwaway dir)."""
        # Created on first use: before any manager save, a written checkpoint would lack the save counter that
        # every restore creates and then expects to find (evaluate.py would refuse the file).
        self.checkpoint.save_counter  # noqa: B018
        return self.checkpoint.write(os.path.join(self.directory, name))

    def close(self):
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


class BestCheckpoints:
    """The --keep_best_checkpoints checkpoints with the highest evaluation top-1, written as best-<step> beside the
    latest ones and listed, best first, in best_checkpoints.json (summary.json repeats the list).

    Every worker takes the same decisions (the save is collective under MultiWorkerMirroredStrategy), so they
    are made from the scores alone: `scores`, filled by the chief from best_checkpoints.json, is broadcast with
    the rest of the state at start (Engine.synchronize) and adopted by the others.
    """

    def __init__(self, saver: Saver, model_dir: str, keep: int, is_chief: bool):
        self.saver, self.model_dir, self.keep, self.is_chief = saver, model_dir, keep, is_chief
        self.entries: list[dict] = []
        path = os.path.join(model_dir, BEST_RECORD)
        if is_chief and keep and tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                self.entries = json.load(f)[:keep]
        scores = [e["eval_accuracy_top_1"] for e in self.entries] + [-1.0] * (keep - len(self.entries))
        self.scores = tf.Variable(scores, dtype=tf.float64, trainable=False, name="best_scores") if keep else None

    def adopt_synchronized(self):
        """Non-chief workers: the chief's scores (after Engine.synchronize), standing in for its entries."""
        if self.scores is not None and not self.is_chief:
            self.entries = [{"eval_accuracy_top_1": float(s)} for s in self.scores.numpy() if s >= 0]

    def consider(self, step: int, epoch: int, metrics: dict) -> str | None:
        """After an evaluation: writes best-<step> if its top-1 is among the best `keep`; returns its path."""
        if not self.keep:
            return None
        top1, weights = best_top1(metrics)
        # Strictly better than the worst kept one: on a tie the earlier checkpoint stays.
        if len(self.entries) >= self.keep and top1 <= min(e["eval_accuracy_top_1"] for e in self.entries):
            return None
        path = self.saver.write(f"best-{step}")
        entry = {"checkpoint": os.path.join(self.model_dir, f"best-{step}"), "step": step, "epoch": epoch,
                 "eval_accuracy_top_1": top1, "weights": weights}
        ranked = sorted([e for e in self.entries if e.get("step") != step] + [entry],
                        key=lambda e: -e["eval_accuracy_top_1"])
        self.entries, dropped = ranked[:self.keep], ranked[self.keep:]
        if self.is_chief:
            for old in dropped:
                for file in tf.io.gfile.glob(old["checkpoint"] + ".*"):
                    tf.io.gfile.remove(file)
            record = os.path.join(self.model_dir, BEST_RECORD)
            with tf.io.gfile.GFile(record + ".tmp", "w") as f:
                json.dump(self.entries, f, indent=1)
            tf.io.gfile.rename(record + ".tmp", record, overwrite=True)
        return path


def best_top1(metrics: dict) -> tuple[float, str]:
    """The evaluation's top-1 and which weights reached it: the better of raw and EMA when both were evaluated."""
    if "best_eval_accuracy_top_1" in metrics:
        return metrics["best_eval_accuracy_top_1"], metrics["best_weights"]
    if "eval_accuracy_top_1" in metrics:
        return metrics["eval_accuracy_top_1"], "raw"
    return metrics["eval_accuracy_top_1_ema"], "ema"
