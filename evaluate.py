"""Evaluate a checkpoint: `python evaluate.py --ckpt MODEL_DIR_OR_PREFIX [--data_dir ...] [--weights both]`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from flags import eval_flags  # noqa: E402

eval_flags.define_eval_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = eval_flags.eval_config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from loops.distribution import create_engine
    from loops.offline_evaluation import evaluate_checkpoint, results_table
    engine = create_engine()
    try:
        results = evaluate_checkpoint(cfg, engine)
    except (FileNotFoundError, ValueError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 1
    if engine.is_chief:
        print(results_table(results))
        print(f"Results written to {results['results_json']}")
    return 0


if __name__ == "__main__":
    app.run(main)
