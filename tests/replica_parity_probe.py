"""Run by test_training_runs: train on 1 replica and on 2 logical CPUs (MirroredStrategy) at the same global
batch, with synchronized BatchNorm, and print how far the final weights are apart (one JSON line)."""

import json
import pathlib
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import keras  # noqa: E402
import numpy as np  # noqa: E402

from loops.checkpoints import RunSpec, make_checkpoint  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.parallel.distribution import Engine, mirrored_engine  # noqa: E402
from loops.ema import ExponentialMovingAverage  # noqa: E402
from loops.training import train  # noqa: E402


def run(model_dir, engine, per_replica_batch):
    cfg = TrainConfig(model_dir=model_dir, mode="train", train_img_size=32, eval_img_size=32,
                      train_batch_size=per_replica_batch, steps_per_epoch=4, max_epochs=1, warmup_epochs=0,
                      moving_average_decay=0.99, lr_init=0.02,
                      # SGD: RMSprop's first updates (mean square near 0) magnify float-order differences
                      # of the cross-replica BatchNorm sums far beyond what a parity check can bound.
                      optimizer="sgd",
                      model_overrides={"dropout_rate": 0.0, "drop_connect_rate": 0.0, "sync_bn": True})
    summary = train(cfg, engine)
    return summary, restored_weights(model_dir)


def restored_weights(model_dir=None):
    """Model weights then EMA shadows from the latest checkpoint; the seeded initial weights without one."""
    keras.utils.set_random_seed(0)  # as train() does before building, so no checkpoint = the start point
    spec = RunSpec.load(f"{OUT}/one")
    model = spec.build_model()
    ema = ExponentialMovingAverage(model, 0.99, tf.distribute.get_strategy())
    if model_dir:
        make_checkpoint(model, ema=ema).restore(tf.train.latest_checkpoint(model_dir)).expect_partial()
    return model.get_weights() + [s.numpy() for s in ema.shadows]


def main():
    one_summary, one = run(f"{OUT}/one", Engine(tf.distribute.OneDeviceStrategy("/cpu:0"), "one_device"), 16)
    two_summary, two = run(f"{OUT}/two", mirrored_engine(["/cpu:0", "/cpu:1"]), 8)
    start = restored_weights()
    print(json.dumps({"replicas": [1, 2], "steps": [one_summary["steps"], two_summary["steps"]],
                      "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(one, two)),
                      "max_abs_change": max(float(np.max(np.abs(a - b))) for a, b in zip(one, start)),
                      "compared": len(one)}))


if __name__ == "__main__":
    OUT = sys.argv[1]
    main()
