"""Run by tests/test_training_runs.py: a run preempted mid-epoch and resumed with another shape (per-replica batch,
replica count, --grad_accum_steps), all in one process with two logical CPUs. Not a test module (no test_ prefix).

    python tests/reshape_probe.py OUT

Data: 48 training images (so an epoch is 48 examples at every global batch). The base run trains 2 epochs at a
global batch of 8 with a checkpoint per step; each case copies it, rolls it back to a mid-epoch checkpoint (as
if preempted there) and resumes with its own shape. A reference run has a global batch of 16 from the start.
Prints one JSON line: per run, its summary and its (examples_seen, lr, step) train records.
"""

import json
import os
import pathlib
import shutil
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from input import testdata  # noqa: E402
from input.config import DataConfig  # noqa: E402
from loops.config import TrainConfig  # noqa: E402
from loops.parallel.distribution import Engine, mirrored_engine  # noqa: E402
from loops.training import train  # noqa: E402

# (name, rolled back to the checkpoint of step, per-replica batch, replicas, accumulation steps)
CASES = (("per_replica_batch", 4, 16, 1, 1), ("replicas", 4, 8, 2, 1), ("grad_accum_steps", 4, 8, 1, 2),
         ("misaligned", 3, 16, 1, 1))


def config(model_dir, data_dir, batch, accum=1) -> TrainConfig:
    return TrainConfig(model_dir=str(model_dir), mode="train", data=DataConfig(data_dir=str(data_dir), num_classes=48),
                       train_img_size=32, eval_img_size=32, train_batch_size=batch, grad_accum_steps=accum,
                       max_epochs=2, warmup_epochs=1, save_checkpoint_steps=1, keep_checkpoints=20, log_steps=1,
                       moving_average_decay=0.99, optimizer="sgd", lr_init=0.02,
                       # A B0 cut to 7 blocks at a quarter width: the example clock is the loop's, not the network's.
                       model_overrides={"dropout_rate": 0.0, "drop_connect_rate": 0.0, "depth_coefficient": 0.1,
                                        "width_coefficient": 0.25})


def engine(replicas: int) -> Engine:
    if replicas == 2:
        return mirrored_engine(["/cpu:0", "/cpu:1"])
    return Engine(tf.distribute.OneDeviceStrategy("/cpu:0"), "one_device")


def roll_back(model_dir: pathlib.Path, step: int):
    """The run as a preemption after `step` leaves it: later checkpoints and the log gone."""
    for path in model_dir.iterdir():
        if path.name.startswith("ckpt-") and int(path.name.split("-")[1].split(".")[0]) > step:
            path.unlink()
    kept = [str(model_dir / f"ckpt-{s}") for s in range(1, step + 1)]
    tf.compat.v1.train.update_checkpoint_state(str(model_dir), kept[-1], all_model_checkpoint_paths=kept)
    (model_dir / "log.jsonl").unlink()


def records(model_dir) -> list:
    lines = (pathlib.Path(model_dir) / "log.jsonl").read_text().splitlines()
    return [(r["examples_seen"], r["lr"], r["step"]) for r in map(json.loads, lines) if r["kind"] == "train"]


def main():
    out = pathlib.Path(sys.argv[1])
    data_dir = out / "data"
    testdata.labelled_shards(str(data_dir), "train", [12, 12, 12, 12], size=(32, 32))
    testdata.labelled_shards(str(data_dir), "validation", [8], size=(32, 32))
    results = {}
    for name, model_dir, batch in (("base", out / "base", 8), ("reference", out / "reference", 16)):
        results[name] = {"summary": train(config(model_dir, data_dir, batch), engine(1)), "train": records(model_dir)}
    for name, step, batch, replicas, accum in CASES:
        model_dir = out / name
        shutil.copytree(out / "base", model_dir)
        roll_back(model_dir, step)
        print(f"CASE {name}", flush=True)
        summary = train(config(model_dir, data_dir, batch, accum), engine(replicas))
        results[name] = {"summary": summary, "train": records(model_dir)}
    print("RESHAPE " + json.dumps({k: {"summary": {s: v["summary"][s] for s in ("steps", "epochs", "examples_seen")},
                                       "train": v["train"]} for k, v in results.items()}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
