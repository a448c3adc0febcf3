"""Run by test_training_runs: train on 1 replica and on 2 logical CPUs (MirroredStrategy) at the same global
batch, with synchronized BatchNorm, in float64, and print how far the final weights are apart (one JSON line per
optimizer).

    python tests/replica_parity_probe.py OUT --optimizer sgd rmsprop

float64 runs the whole model and step in double precision (the Keras policy "float64"). To tell float rounding
from a real difference, the probe also measures how much this training amplifies rounding: the same one-replica
run in float32, from the same initial weights, ends `rounding_gap_float32` away from the float64 one. float64
rounds 2**29 times finer, so rounding alone can move the float64 runs about 2**-29 of that apart; a real
difference between one and two replicas would not shrink with the precision."""

import argparse
import json
import pathlib
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import keras  # noqa: E402
import numpy as np  # noqa: E402

import loops.training  # noqa: E402
from loops.checkpoints import RunSpec, make_checkpoint  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.ema import ExponentialMovingAverage  # noqa: E402
from loops.parallel.distribution import Engine, mirrored_engine  # noqa: E402

build_model = RunSpec.build_model


def build_from_float32_init(spec: RunSpec) -> keras.Model:
    """The model in the current policy with the weights the float32 model gets from the same seed (Keras draws
    float64 initial values from another random stream)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    initial = build_model(spec).get_weights()
    keras.mixed_precision.set_global_policy(policy)
    model = build_model(spec)
    model.set_weights([w.astype(v.dtype) for w, v in zip(initial, model.get_weights())])
    return model


RunSpec.build_model = build_from_float32_init


def run(out, name, engine, per_replica_batch, dtype, optimizer):
    # train() sets the policy of its --precision when it builds the model; this one instead.
    loops.training.set_precision = lambda _precision: keras.mixed_precision.set_global_policy(dtype)
    cfg = TrainConfig(model_dir=f"{out}/{name}", mode="train", train_img_size=32, eval_img_size=32,
                      train_batch_size=per_replica_batch, steps_per_epoch=4, max_epochs=1, warmup_epochs=0,
                      moving_average_decay=0.99, lr_init=0.02, optimizer=optimizer,
                      # A B0 cut to 7 blocks at a quarter width: what is compared is the distribution, not the
                      # network (every kind of layer is still there, BatchNorm synchronized).
                      model_overrides={"dropout_rate": 0.0, "drop_connect_rate": 0.0, "sync_bn": True,
                                       "depth_coefficient": 0.1, "width_coefficient": 0.25})
    summary = loops.training.train(cfg, engine)
    return summary, checkpoint_weights(tf.train.latest_checkpoint(cfg.model_dir))


def checkpoint_weights(prefix):
    """{name: value} of the model weights and EMA shadows in a checkpoint, read from its files (both are saved
    under "ema/": the shadows, and the weights they follow)."""
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name.startswith("ema/")}


def start_weights(out):
    """The weights every run starts from (train() seeds the same way before building), as a checkpoint reads."""
    keras.mixed_precision.set_global_policy("float64")
    keras.utils.set_random_seed(0)
    model = RunSpec.load(f"{out}/one").build_model()
    ema = ExponentialMovingAverage(model, 0.99, tf.distribute.get_strategy())
    return checkpoint_weights(make_checkpoint(model, ema=ema).write(f"{out}/start/ckpt"))


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


def compare(out, optimizer):
    one_device = Engine(tf.distribute.OneDeviceStrategy("/cpu:0"), "one_device")
    one_summary, one = run(out, "one", one_device, 16, "float64", optimizer)
    two_summary, two = run(out, "two", mirrored_engine(["/cpu:0", "/cpu:1"]), 8, "float64", optimizer)
    _, one32 = run(out, "one32", one_device, 16, "float32", optimizer)
    start = start_weights(out)
    print(json.dumps({"optimizer": optimizer, "replicas": [1, 2], "steps": [one_summary["steps"], two_summary["steps"]],
                      "dtypes": sorted({str(w.dtype) for w in [*one.values(), *two.values()]}),
                      "max_abs_diff": max_abs_diff(one, two), "max_abs_change": max_abs_diff(one, start),
                      "rounding_gap_float32": max_abs_diff(one, one32), "compared": len(one)}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--optimizer", nargs="+", default=["sgd"], choices=("sgd", "rmsprop"))
    args = parser.parse_args()
    for name in args.optimizer:
        compare(f"{args.out}/{name}", name)
