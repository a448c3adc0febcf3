"""--init_checkpoint: a fresh run's first weights from a pretrained file (efficientnet.pretrained reads every
format), loaded before the optimizer and the EMA shadows are created, so both start from them.

Only the chief reads the file: `build_run` then hands every variable to `engine.synchronize`, which gives the
other workers (MultiWorkerMirroredStrategy, Horovod) the chief's values, so the file needs to be readable
on the chief alone. On one machine (MirroredStrategy) assigning a mirrored variable sets every replica's copy.
"""

from __future__ import annotations

import keras

from efficientnet import pretrained
from loops.config import TrainConfig
from loops.parallel.engine import Engine
from loops.reporting import Reporter


def initialize(model: keras.Model, cfg: TrainConfig, engine: Engine, reporter: Reporter,
               resuming_from: str | None) -> pretrained.LoadReport | None:
    """Loads cfg.init_checkpoint into `model` on the chief of a fresh run. A run resuming from its own
    checkpoint keeps that (the init file is not read), and says so."""
    if not cfg.init_checkpoint:
        return None
    if resuming_from:
        reporter.say(f"--init_checkpoint {cfg.init_checkpoint} ignored: resuming from {resuming_from}")
        return None
    if not engine.is_chief:
        return None
    try:
        pretrained.excluded_variables(model, cfg.init_checkpoint_exclude)
    except ValueError as e:
        raise ValueError(f"--init_checkpoint_exclude: {e}") from None
    try:
        report = pretrained.load_into(model, cfg.init_checkpoint, weights=cfg.init_checkpoint_weights,
                                      replace_head=cfg.init_checkpoint_replace_head,
                                      exclude=cfg.init_checkpoint_exclude,
                                      input_normalization=cfg.init_normalization)
    except pretrained.ClassifierMismatch as e:
        found = "no classifier (a notop file)" if e.file_classes is None else f"a {e.file_classes}-class classifier"
        raise ValueError(f"--init_checkpoint {e.path} has {found}, this run {e.model_classes} classes; pass "
                         "--init_checkpoint_replace_head to start a fresh classifier") from None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--init_checkpoint {e}") from None
    except ValueError as e:
        raise ValueError(f"--init_checkpoint {e}") from None
    reporter.say(f"Initialized from --init_checkpoint: {report.summary()}")
    return report
