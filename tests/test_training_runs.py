"""Whole training runs on the embedded demo dataset: resume, stages, replicas, and the command line."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import threading
import weakref

import numpy as np
import pytest
import tensorflow as tf

from input.config import AugmentConfig
from loops.config import TrainConfig
from loops.parallel.distribution import Engine
from loops.stages import plan_stages, stage_of_epoch
from loops.iterators import IteratorRelease
from loops.training import train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_config(model_dir, **overrides) -> TrainConfig:
    base = dict(model_dir=str(model_dir), train_img_size=32, eval_img_size=32, base_img_size=24,
                train_batch_size=8, eval_batch_size=64, steps_per_epoch=3, max_epochs=2, warmup_epochs=1,
                save_checkpoint_freq=1, log_steps=1, mode="train", moving_average_decay=0.99,
                # A B0 cut to 7 blocks at a quarter width: these runs test the loop, not the network.
                model_overrides={"dropout_rate": 0.0, "drop_connect_rate": 0.0, "depth_coefficient": 0.1,
                                 "width_coefficient": 0.25})
    return TrainConfig(**{**base, **overrides})


def one_device():
    return Engine(tf.distribute.OneDeviceStrategy("/cpu:0"), "one_device")


def checkpoint_values(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir))
    names = [n for n, _ in tf.train.list_variables(str(model_dir))
             if n.startswith(("model/", "ema/", "optimizer/")) and "OPTIMIZER_SLOT" not in n]
    return {n: reader.get_tensor(n) for n in names}


def log_records(model_dir, kind):
    lines = (pathlib.Path(model_dir) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_dropped_input_iterator_is_destroyed_off_the_main_thread_and_join_waits_for_it():
    """An epoch's finished tf.data iterator (autotuned, as the train pipeline is) is destroyed on a thread of
    its own, so the next epoch does not wait for it; join() returns once it is gone."""
    dataset = tf.data.Dataset.range(64).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)
    holder = [iter(dataset)]
    assert [int(next(holder[0])) for _ in range(3)] == [0, 2, 4]
    destroyed_on = []
    weakref.finalize(holder[0], lambda: destroyed_on.append(threading.current_thread().name))
    release = IteratorRelease()
    release.drop(holder)
    release.join()
    assert holder == [] and destroyed_on == ["input-iterator-release"]


def test_stage_plan_follows_the_reference_formula():
    cfg = tiny_config("/tmp/unused", n_stages=4, max_epochs=10, base_img_size=128, train_img_size=224,
                      base_raug_magnitude=5, augment=AugmentConfig(raug_magnitude=15, mixup_alpha=0.2))
    stages = plan_stages(cfg)
    assert [s.image_size for s in stages] == [152, 176, 200, 224]
    assert [(s.first_epoch, s.num_epochs) for s in stages] == [(0, 2), (2, 2), (4, 2), (6, 4)]
    assert [s.raug_magnitude for s in stages] == [7.5, 10.0, 12.5, 15.0]
    assert [s.mixup_alpha for s in stages] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert stage_of_epoch(stages, 5).index == 2 and stage_of_epoch(stages, 9).index == 3
    single = plan_stages(tiny_config("/tmp/unused", n_stages=1, max_epochs=3))
    assert [(s.image_size, s.num_epochs) for s in single] == [(32, 3)]


@pytest.mark.slow
def test_resume_after_a_lost_epoch_ends_with_the_same_weights_in_the_right_stage(tmp_path):
    cfg = tiny_config(tmp_path / "whole", n_stages=2)
    summary = train(cfg, one_device())
    assert summary["epochs"] == 2 and summary["steps"] == 6
    sizes = [(r["epoch"], r["stage"], r["image_size"]) for r in log_records(cfg.model_dir, "epoch")]
    assert sizes == [(1, 1, 28), (2, 2, 32)]

    # The same run, killed during epoch 2: its last complete checkpoint is the one after epoch 1.
    resumed = dataclasses.replace(cfg, model_dir=str(tmp_path / "resumed"))
    shutil.copytree(cfg.model_dir, resumed.model_dir)
    for name in os.listdir(resumed.model_dir):
        if name.startswith("ckpt-6"):
            os.remove(os.path.join(resumed.model_dir, name))
    tf.compat.v1.train.update_checkpoint_state(resumed.model_dir, os.path.join(resumed.model_dir, "ckpt-3"))
    os.remove(os.path.join(resumed.model_dir, "log.jsonl"))

    summary = train(resumed, one_device())
    assert summary["steps"] == 6
    assert [(r["epoch"], r["stage"], r["image_size"]) for r in log_records(resumed.model_dir, "epoch")] == [(2, 2, 32)]
    whole, again = checkpoint_values(cfg.model_dir), checkpoint_values(resumed.model_dir)
    assert whole.keys() == again.keys() and len(whole) > 400
    for name in whole:
        np.testing.assert_allclose(again[name], whole[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def replica_parity(tmp_path_factory, run_script):
    """tests/replica_parity_probe.py for both optimizers in one process: {optimizer: its JSON line}."""
    out = run_script("tests/replica_parity_probe.py", tmp_path_factory.mktemp("parity"), "--optimizer", "sgd",
                     "rmsprop", timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"optimizer"')]
    return {line["optimizer"]: line for line in lines}


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_two_replicas_match_one_in_float64_to_within_float64_rounding(replica_parity, optimizer):
    """Same data, same synchronized BatchNorm statistics, global batch 16 on one replica or two: only the order of
    float sums differs. In float32 the two end about as far apart as a float32 run ends from a float64 run
    (rounding, amplified by training: docs/training_loop.md); in float64 that amplified rounding is 2**-29 times
    smaller, and the two replicas must agree to within it (x16 for the different rounding of two runs)."""
    result = replica_parity[optimizer]
    assert result["replicas"] == [1, 2] and result["steps"] == [4, 4] and result["dtypes"] == ["float64"]
    assert result["max_abs_change"] > 0.1 and result["compared"] > 200, result  # training moved the weights
    assert result["rounding_gap_float32"] > 1e-6, result  # float32 rounding shows at all
    assert result["max_abs_diff"] <= 16 * 2**-29 * result["rounding_gap_float32"], result


@pytest.fixture(scope="module")
def reshaped(tmp_path_factory, run_script):
    """tests/reshape_probe.py: a run of 48-example epochs at global batch 8, preempted mid-epoch 1 and resumed
    with a per-replica batch of 16, with 2 replicas, with 2 accumulation steps (global batch 16 each), and from a
    position that is no multiple of 16; plus a run at global batch 16 from the start."""
    out = run_script("tests/reshape_probe.py", tmp_path_factory.mktemp("reshape"), timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESHAPE ", 1)[1]), out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("case,change", [("per_replica_batch", "per-replica batch 8 -> 16"),
                                         ("replicas", "replicas 1 -> 2"),
                                         ("grad_accum_steps", "--grad_accum_steps 1 -> 2")])
def test_resume_with_another_shape_continues_on_the_example_clock(reshaped, case, change):
    results, stdout = reshaped
    note = stdout.split(f"CASE {case}", 1)[1]
    assert re.search(r"Resuming from \S+ckpt-4: epoch 1, example 32 of 48, step 4\. The run shape changed \("
                     + re.escape(change) + r", steps per epoch 6 -> 3; global batch 8 -> 16\): training continues "
                     r"on the same example clock", note), note[:3000]
    run, reference = results[case], results["reference"]
    # The rest of epoch 1 (one step of 16) and epoch 2 (three): every example of both epochs, once.
    assert run["summary"] == {"steps": 4 + 4, "epochs": 2, "examples_seen": 96}
    assert [seen for seen, _, _ in run["train"]] == [48, 64, 80, 96]
    # The learning rate at each position is the one of a run at global batch 16 from the start: the schedule
    # follows the examples seen, its peak the new global batch.
    lr_at = {seen: lr for seen, lr, _ in reference["train"]}
    for seen, lr, _ in run["train"]:
        assert lr == pytest.approx(lr_at[seen], rel=1e-6, abs=1e-12), seen
    base = {seen: lr for seen, lr, _ in results["base"]["train"]}
    assert base[32] == pytest.approx(lr_at[32] / 2, rel=1e-6)  # before: same clock, half the global batch


@pytest.mark.slow
def test_resume_between_two_global_batches_drops_only_the_incomplete_last_one(reshaped):
    """Preempted after 24 examples, resumed at global batch 16: one step covers examples 24-39, the 8 left of the
    epoch make no full batch (as at the end of any epoch), and epoch 2 is whole."""
    run, reference = reshaped[0]["misaligned"], reshaped[0]["reference"]["train"]
    assert run["summary"] == {"steps": 3 + 4, "epochs": 2, "examples_seen": 24 + 16 + 48}
    assert [seen for seen, _, _ in run["train"]] == [40, 56, 72, 88]
    # Epoch 2 starts on time: its learning rates are the reference's epoch-2 ones (at 64, 80, 96 examples there).
    assert [lr for _, lr, _ in run["train"][1:]] == pytest.approx([lr for _, lr, _ in reference[3:]], rel=1e-6)


@pytest.mark.parametrize("flag,value,message", [
    ("--train_batch_size", "0", "--train_batch_size=0: must be positive"),
    ("--grad_accum_steps", "-2", "--grad_accum_steps=-2: must be positive"),
    ("--max_epochs", "0", "--max_epochs=0: must be positive"),
    ("--train_img_size", "0", "--train_img_size=0: must be positive"),
    ("--arch", "efficientnet-b9", "unknown EfficientNet variant 'efficientnet-b9'"),
    ("--mparams", "dropout=0.1", "unknown model parameter 'dropout'"),
    ("--mparams", "classifier_init=zeros", "invalid model parameter classifier_init='zeros': not one of fan_out, "
                                           "fan_in"),
    ("--precision", "fp32", "--use_amp=True: contradicts --precision=fp32"),
    ("--trainable_from", "block9a", "--trainable_from='block9a': not a block of efficientnet-b0"),
    ("--init_checkpoint_exclude", "predictions",
     "--init_checkpoint_exclude=('predictions',): needs --init_checkpoint"),
])
def test_bad_flags_stop_before_any_work_naming_the_flag(tmp_path, run_script, flag, value, message):
    extra = ["--use_amp"] if flag == "--precision" else []
    out = run_script("train.py", flag, value, *extra, "--model_dir", tmp_path, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr
    assert not (tmp_path / "log.jsonl").exists()
