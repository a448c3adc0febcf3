"""Rebuilding a trained network for inference: checkpoint + run_spec.json -> model (raw or EMA weights),
and the class names to show for its outputs."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re

import keras
import tensorflow as tf

from loops.checkpoints import (READ_ERRORS, RUN_SPEC, DamagedCheckpoint, RunSpec, damage_report, kept_checkpoints,
                               make_checkpoint, read_checkpoint, resolve_checkpoint)
from loops.ema import ExponentialMovingAverage


@dataclasses.dataclass
class Restored:
    spec: RunSpec
    model: keras.Model
    ema: ExponentialMovingAverage | None  # None when the checkpoint holds no EMA shadows
    checkpoint_path: str
    model_dir: str

    @property
    def has_ema(self) -> bool:
        return self.ema is not None

    def use_ema_weights(self):
        """Copies the EMA shadows into the model for good (for predict/export, which never need raw again)."""
        if self.ema is None:
            raise ValueError(f"--weights=ema, but checkpoint {self.checkpoint_path} holds no EMA weights (trained "
                             "with --moving_average_decay=0); use --weights=raw")
        self.ema.swap()


def checkpoint_has_ema(path: str) -> bool:
    return any(name.startswith("ema/") for name, _ in tf.train.list_variables(path))


def restore(ckpt: str, strategy: tf.distribute.Strategy | None = None, with_ema: bool = True) -> Restored:
    """ckpt: a checkpoint prefix (model_dir/ckpt-N, model_dir/best-N) or a model_dir (its latest checkpoint).

    Raises FileNotFoundError naming --ckpt when there is no checkpoint or no run_spec.json beside it, and
    DamagedCheckpoint (a ValueError) naming the unreadable file and the other checkpoints kept beside it.
    """
    try:
        path = resolve_checkpoint(ckpt)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--ckpt {ckpt}: {e}") from None
    model_dir = ckpt if tf.io.gfile.isdir(ckpt) else os.path.dirname(path)
    spec = RunSpec.load(model_dir)
    if spec is None:
        raise FileNotFoundError(f"--ckpt {ckpt}: no {RUN_SPEC} in {model_dir}; it is written by train.py next to "
                                f"the checkpoints and says which network to rebuild")
    strategy = strategy or tf.distribute.get_strategy()
    try:
        load_ema = with_ema and checkpoint_has_ema(path)
        with strategy.scope():
            model = spec.build_model()
            # The decay is irrelevant here: shadows are only restored and swapped in, never updated.
            ema = ExponentialMovingAverage(model, 0.5, strategy) if load_ema else None
        status = read_checkpoint(make_checkpoint(model, ema=ema), path)
    except (DamagedCheckpoint, *READ_ERRORS) as e:
        others = [os.path.basename(p) for p in kept_checkpoints(model_dir) if p != path]
        reason = str(e) if isinstance(e, DamagedCheckpoint) else damage_report(path, e)
        raise DamagedCheckpoint(f"--ckpt {ckpt}: {reason}; "
                                + (f"other checkpoints in {model_dir}: {', '.join(others)}" if others
                                   else "no other checkpoint is kept beside it")) from None
    try:
        # Every model (and shadow) variable must come from the file; the optimizer slots may stay behind.
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"--ckpt {ckpt}: checkpoint {path} does not fit the network of {RUN_SPEC} "
                         f"({spec.variant}, {spec.num_classes} classes): {e}") from None
    status.expect_partial()
    return Restored(spec=spec, model=model, ema=ema, checkpoint_path=path, model_dir=model_dir)


def restore_served(ckpt: str, weights: str | None) -> tuple[Restored, str]:
    """The network predict.py and the export serve, and which weights it holds: `weights` None means EMA when
    the checkpoint has them, else raw."""
    restored = restore(ckpt, with_ema=weights != "raw")
    chosen = weights or ("ema" if restored.has_ema else "raw")
    if chosen == "ema":
        restored.use_ema_weights()
    return restored, chosen


_WNID = re.compile(r"^n\d{8}$")


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 class names in label order, from the copy tensorflow-datasets ships (in its
    SI-Score labels module); read as text so TFDS itself is not imported and nothing is downloaded."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("tensorflow-datasets is not installed; it provides the ImageNet class names")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "siscore", "labels.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "IMAGENET_LABELS_LIST":
            names = tuple(ast.literal_eval(node.value))
            if len(names) == 1000:
                return names
    raise ValueError(f"{path} no longer holds the 1000 ImageNet class names (IMAGENET_LABELS_LIST)")


def display_class_names(spec: RunSpec) -> tuple[str, ...]:
    """The dataset's own label names, except for a 1000-class model whose stored names are only numbers or
    WordNet ids (ImageNet shards without label texts): then the ImageNet names."""
    names = tuple(spec.class_names)
    anonymous = not names or all(n.isdigit() or _WNID.match(n) for n in names)
    if spec.num_classes == 1000 and anonymous:
        return imagenet_class_names()
    if len(names) < spec.num_classes:  # --num_classes wider than the dataset: the extra outputs have no name
        names = names + tuple(f"class_{i}" for i in range(len(names), spec.num_classes))
    return names
