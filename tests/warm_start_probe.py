"""Run by tests/test_warm_start.py: builds a run with --init_checkpoint through loops.training.build_run and
dumps every replica's copy of every model weight and EMA shadow to OUT/vars-<name>.npz. Not a test module.

    python tests/warm_start_probe.py mirrored OUT INIT MPARAMS   one process, two logical CPUs (MirroredStrategy)
    python tests/warm_start_probe.py worker OUT INIT MPARAMS     one TF_CONFIG worker (MultiWorkerMirroredStrategy)

MPARAMS: train.py's --mparams for the network (the tests' tiny one).
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from efficientnet.overrides import parse_overrides  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.parallel.distribution import create_engine, mirrored_engine  # noqa: E402


def main():
    mode, out, init, mparams = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        engine = mirrored_engine(["/cpu:0", "/cpu:1"])
    else:
        engine = create_engine("tf_distribute")
    cfg = TrainConfig(model_dir=str(out / "run"), mode="train", train_img_size=32, eval_img_size=32,
                      train_batch_size=8, steps_per_epoch=2, max_epochs=1, warmup_epochs=0,
                      moving_average_decay=0.99, init_checkpoint=init, model_overrides=parse_overrides(mparams))
    from loops.training import build_run

    run = build_run(cfg, engine)
    strategy, model, ema = engine.strategy, run.state.model, run.state.ema
    values = {}
    for weight, shadow in zip(model.weights, ema.shadows):
        for r, local in enumerate(strategy.experimental_local_results(weight.value)):
            values[f"{weight.path}@{r}"] = local.numpy()
        for r, local in enumerate(strategy.experimental_local_results(shadow)):
            values[f"ema:{weight.path}@{r}"] = local.numpy()
    np.savez(out / f"vars-{mode}-{engine.worker_index}.npz", **values)
    run.reporter.close()
    run.saver.close()
    if run.lock:
        run.lock.release()
    print(f"PROBE {mode} worker {engine.worker_index} of {engine.num_workers}, {engine.num_replicas} replicas",
          flush=True)


if __name__ == "__main__":
    main()
