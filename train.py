"""Train (and evaluate) EfficientNet: `python train.py --data_dir ... --model_dir ...`; see --helpfull."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from flags import benchmark_flags, train_flags  # noqa: E402

train_flags.define_train_flags()
benchmark_flags.define_benchmark_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = train_flags.train_config_from_flags()
        bench = benchmark_flags.benchmark_config_from_flags(cfg) if cfg.mode.endswith("_benchmark") else None
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    from loops.distribution import engine_for
    try:
        engine = engine_for(cfg)  # --engine: Horovod under horovodrun, else tf.distribute
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if bench is not None:
        from loops.benchmark import run_benchmark
        run_benchmark(bench, engine)
        return
    from loops.safety import RUN_ERRORS
    from loops.training import train
    try:
        train(cfg, engine)
    except RUN_ERRORS as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
