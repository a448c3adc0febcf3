"""Average several checkpoints' weights and evaluate the result:
`python -m loops.average_checkpoints --ckpts MODEL_DIR [--data_dir ...]` (the best checkpoints train.py kept with
--keep_best_checkpoints) or `--ckpts run/best-300,run/best-310,...`. The averaged checkpoint (default
<model_dir>/averaged) is read by evaluate.py, predict.py and export.py like any other."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flags import cli  # noqa: E402
from loops.config import AverageConfig  # noqa: E402


def work(cfg: AverageConfig) -> int:
    from loops.averaging import average_checkpoints, describe
    from loops.offline_evaluation import print_results
    from loops.parallel.distribution import create_engine

    engine = create_engine()
    results = average_checkpoints(cfg, engine)
    if engine.is_chief:
        print(describe(results))
        print_results(results)
    return 0


if __name__ == "__main__":
    cli.run("average_checkpoints", AverageConfig, work)
