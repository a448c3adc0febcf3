"""Train (and evaluate) EfficientNet: `python train.py --data_dir ... --model_dir ...`; see --helpfull.

Flags keep the names of NVIDIA's EfficientNet TF2 scripts, so existing launch scripts carry over.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flags import cli  # noqa: E402
from loops import host_memory  # noqa: E402
from loops.config import BENCHMARK_MODES, TrainConfig  # noqa: E402
from loops.safety import RUN_ERRORS  # noqa: E402


def work(cfg: TrainConfig) -> int:
    host_memory.keep_freed_memory()  # before TensorFlow allocates: every step reuses the last one's memory
    # TensorFlow loads here, after the flags were checked: --help and bad flags answer at once.
    from loops.parallel.distribution import engine_for

    engine = engine_for(cfg)  # --engine: Horovod under horovodrun, else tf.distribute
    if cfg.mode in BENCHMARK_MODES:
        from loops.bench.benchmark import run_benchmark

        run_benchmark(cfg, engine)
    else:
        from loops.safety import Preempted
        from loops.training import train

        try:
            train(cfg, engine)
        except Preempted as stopped:
            stopped.exit_now()
    return 0


if __name__ == "__main__":
    cli.run("train.py", TrainConfig, work, errors=RUN_ERRORS)
