"""Evaluate a checkpoint: `python evaluate.py --ckpt MODEL_DIR_OR_PREFIX [--data_dir ...] [--weights both]`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flags import cli  # noqa: E402
from loops import host_memory  # noqa: E402
from loops.config import EvalConfig  # noqa: E402


def work(cfg: EvalConfig) -> int:
    host_memory.keep_freed_memory()  # before TensorFlow allocates: every batch reuses the last one's memory
    from loops.offline_evaluation import evaluate_checkpoint, print_results
    from loops.parallel.distribution import create_engine

    engine = create_engine()
    results = evaluate_checkpoint(cfg, engine)
    if engine.is_chief:
        print_results(results)
    return 0


if __name__ == "__main__":
    cli.run("evaluate.py", EvalConfig, work)
