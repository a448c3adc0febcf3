"""Several checkpoints of one run averaged weight by weight into a new checkpoint (as timm users average their
best checkpoints), which evaluate.py, predict.py and export.py read like any other, then evaluated."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from loops.checkpoints import BEST_RECORD, make_checkpoint
from loops.config import AverageConfig, EvalConfig
from loops.offline_evaluation import evaluate_checkpoint
from loops.parallel.engine import Engine
from loops.precision import set_precision
from loops.restore import checkpoint_has_ema, restore

SOURCES = "averaged_from.json"


def expand_checkpoints(items) -> list[str]:
    """Prefixes as given; a model_dir stands for the best checkpoints train.py recorded in it."""
    paths = []
    for item in items:
        record = os.path.join(item, BEST_RECORD)
        if tf.io.gfile.isdir(item):
            if not tf.io.gfile.exists(record):
                raise FileNotFoundError(f"--ckpts {item}: a model_dir without {BEST_RECORD} (train it with "
                                        "--keep_best_checkpoints N, or list checkpoint prefixes)")
            with tf.io.gfile.GFile(record) as f:
                paths += [os.path.join(item, os.path.basename(e["checkpoint"])) for e in json.load(f)]
        else:
            paths.append(item)
    return paths


def average_checkpoints(cfg: AverageConfig, engine: Engine) -> dict:
    """Writes the average of the checkpoints' weights (BatchNorm statistics included) to cfg.output and returns
    its evaluation (evaluate.py's results) with the checkpoints and weights it came from."""
    set_precision(cfg.precision)
    paths = expand_checkpoints(cfg.ckpts)
    if len(paths) < 2:
        raise ValueError(f"--ckpts {','.join(cfg.ckpts)}: averaging needs at least two checkpoints, got {len(paths)}")
    weights = cfg.weights or ("ema" if all(checkpoint_has_ema(p) for p in paths) else "raw")
    total, spec = None, None
    for path in paths:
        restored = restore(path, with_ema=weights == "ema")
        if spec is None:
            spec = restored.spec
        else:
            spec.check_compatible(restored.spec, restored.model_dir)
        if weights == "ema":
            restored.use_ema_weights()  # names the checkpoint that has none
        values = [np.asarray(w, np.float64) for w in restored.model.get_weights()]
        total = values if total is None else [t + v for t, v in zip(total, values)]
    output = cfg.output or os.path.join(os.path.dirname(paths[0]) or ".", "averaged")
    model = spec.build_model()
    model.set_weights([(t / len(paths)).astype(w.dtype) for t, w in zip(total, model.get_weights())])
    tf.io.gfile.makedirs(output)
    spec.save(output)
    prefix = tf.train.CheckpointManager(make_checkpoint(model), output, max_to_keep=1).save(checkpoint_number=0)
    with tf.io.gfile.GFile(os.path.join(output, SOURCES), "w") as f:
        json.dump({"checkpoints": paths, "weights": weights}, f, indent=1)
    eval_cfg = EvalConfig(ckpt=prefix, weights="raw", data=cfg.data, eval_batch_size=cfg.eval_batch_size,
                          eval_img_size=cfg.eval_img_size, precision=cfg.precision)
    results = evaluate_checkpoint(eval_cfg, engine)
    return {**results, "averaged": paths, "averaged_weights": weights}


def describe(results: dict) -> str:
    return (f"Averaged the {results['averaged_weights']} weights of {len(results['averaged'])} checkpoints "
            f"({', '.join(os.path.basename(p) for p in results['averaged'])}) into {results['checkpoint']}")
