"""Faults caused for real against real train.py processes: signals, kills, NaNs, a full disk, a second run."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

import preloaded
from input import testdata
from loops.checkpoints import DamagedCheckpoint
from loops.config import EvalConfig, TrainConfig
from loops.offline_evaluation import evaluate_checkpoint
from loops.parallel.distribution import create_engine
from loops.safety import ModelDirLock
from loops.training import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
# 3 epochs x 6 steps at 32 px on the demo set of a B0 cut to 7 blocks at a quarter width (these faults concern
# the loop, not the network; tracing the full B0 would double each run), no dropout so runs compare bit for bit.
# A process costs its start and its tracing, hardly its steps: 18 of them leave room to interrupt a run thrice.
TINY = ["--train_img_size", "32", "--eval_img_size", "32", "--train_batch_size", "8", "--steps_per_epoch", "6",
        "--max_epochs", "3", "--warmup_epochs", "1", "--mode", "train", "--log_steps", "1",
        "--moving_average_decay", "0.99",
        "--mparams", "dropout_rate=0,drop_connect_rate=0,depth_coefficient=0.1,width_coefficient=0.25"]


def start(model_dir, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return preloaded.Process(["train.py", "--model_dir", str(model_dir), *TINY, *extra], env=env)


# Bounds for a run that hangs, not waits: a run on a machine shared by a few test sessions starts in minutes.
def finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def train_records(model_dir):
    path = pathlib.Path(model_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def wait_for(predicate, proc, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("timed out")


def final_state(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir))
    return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(str(model_dir))
            if n.startswith(("model/", "ema/", "optimizer/", "epoch", "examples_"))}


@pytest.fixture(scope="module")
def uninterrupted_dir(tmp_path_factory):
    """The uninterrupted run's model_dir, with a checkpoint after each epoch (ckpt-6, -12, -18) and every 3 steps
    (ckpt-15; --keep_checkpoints 3 keeps ckpt-12, -15, -18): the tests that need a model_dir copy it. Saving
    leaves the trained state as it is, so the runs that save otherwise compare with it too."""
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    code, _, err = finish(start(model_dir, "--save_checkpoint_freq", "1", "--save_checkpoint_steps", "3"))
    assert code == 0, err[-3000:]
    return model_dir


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir):
    return final_state(uninterrupted_dir)


def copied(model_dir, to, keep_until=None):
    """A copy of model_dir; with keep_until, as a run stopped after its checkpoint of that step leaves it."""
    shutil.copytree(model_dir, to)
    if keep_until:
        for path in to.glob("ckpt-*"):
            if int(path.name.split("-")[1].split(".")[0]) > keep_until:
                path.unlink()
        tf.compat.v1.train.update_checkpoint_state(str(to), str(to / f"ckpt-{keep_until}"))
    return to


def assert_same_state(state, expected):
    assert state.keys() == expected.keys() and len(state) > 400
    for name in expected:
        np.testing.assert_allclose(state[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def stopped_step(out):
    return int(out.split("Stopped by ", 1)[1].split(" at step ", 1)[1].split(";")[0])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """One run interrupted thrice, as a requeued job may be: SIGUSR1 mid-epoch 1, SIGTERM a step or so after the
    resume, SIGKILL a random moment later while it checkpoints every step; the fourth start runs to the end.
    Returns the model_dir, what each start printed, and where the stops were."""
    model_dir = tmp_path_factory.mktemp("interrupted")
    starts = {}
    proc = start(model_dir)
    wait_for(lambda: len(train_records(model_dir)) >= 3, proc)
    proc.send_signal(signal.SIGUSR1)
    starts["SIGUSR1"] = finish(proc)
    examples = tf.train.load_checkpoint(str(model_dir)).get_tensor("examples_in_epoch/.ATTRIBUTES/VARIABLE_VALUE")
    logged = len(train_records(model_dir))
    proc = start(model_dir)
    wait_for(lambda: len(train_records(model_dir)) > logged, proc)
    proc.send_signal(signal.SIGTERM)
    starts["SIGTERM"] = finish(proc)
    logged = len(train_records(model_dir))
    proc = start(model_dir, "--save_checkpoint_steps", "1")
    wait_for(lambda: len(train_records(model_dir)) > logged, proc)
    time.sleep(np.random.default_rng().uniform(0.0, 0.5))  # anywhere in the next steps, mid-write included
    proc.kill()
    starts["SIGKILL"] = finish(proc)
    killed_after = len(train_records(model_dir))
    starts["last"] = finish(start(model_dir, "--save_checkpoint_steps", "1"))
    return {"model_dir": model_dir, "starts": starts, "first_stop_examples": int(examples),
            "logged_when_killed": killed_after}


@pytest.mark.slow
def test_preemption_signal_checkpoints_mid_epoch_and_resumes_exactly(interrupted, uninterrupted):
    """SIGUSR1 and SIGTERM: the step in flight finishes, a checkpoint of it is written, exit code 75; the next
    start resumes there, and the run ends with the uninterrupted run's state."""
    code, out, err = interrupted["starts"]["SIGUSR1"]
    assert code == 75, err[-3000:]
    stopped_at = interrupted["first_stop_examples"] // 8
    assert 3 <= stopped_at < 6 and stopped_step(out) == stopped_at  # a step after the signal, not the epoch's end
    assert "Stopped by SIGUSR1 at step" in out
    code, out, err = interrupted["starts"]["SIGTERM"]
    assert code == 75, err[-3000:]
    model_dir = interrupted["model_dir"]
    assert f"Resuming from {model_dir / f'ckpt-{stopped_at}'}: epoch 1, example {8 * stopped_at} of 48" in out
    assert "Stopped by SIGTERM at step" in out and stopped_at < stopped_step(out) < 18
    code, out, err = interrupted["starts"]["last"]
    assert code == 0, err[-3000:]
    assert_same_state(final_state(model_dir), uninterrupted)  # same step, same LR schedule, same EMA


@pytest.mark.slow
def test_sigkill_while_checkpointing_every_step_resumes_from_the_last_complete_checkpoint(interrupted, uninterrupted):
    code, _, _ = interrupted["starts"]["SIGKILL"]
    assert code == -signal.SIGKILL  # killed before its last step
    code, out, err = interrupted["starts"]["last"]
    assert code == 0, err[-3000:]
    resumed_step = int(out.split("Resuming from", 1)[1].split("step ", 1)[1].split()[0])
    assert resumed_step >= interrupted["logged_when_killed"] - 1  # at most one checkpoint interval (a step) lost
    assert_same_state(final_state(interrupted["model_dir"]), uninterrupted)


@pytest.mark.slow
def test_persistent_non_finite_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, uninterrupted_dir):
    run = copied(uninterrupted_dir, tmp_path / "run", keep_until=12)
    good = tf.train.latest_checkpoint(str(run))
    good_files = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name.startswith("ckpt")}
    # The run after two epochs, continued with a learning rate that blows the weights up (a step of 1e30 takes
    # float32 activations past their range at once; RMSprop's steps do not grow with the gradient).
    code, _, err = finish(start(run, "--lr_init", "1e30", "--max_bad_steps", "2"))
    assert code == 1
    assert "consecutive steps, up to step" in err and "epoch 3" in err
    assert tf.train.latest_checkpoint(str(run)) == good
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name.startswith("ckpt")} == good_files


@pytest.mark.slow
def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, uninterrupted_dir):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for one checkpoint of this run (the same model as the uninterrupted one's) and its logs, not for two.
    size = sum(p.stat().st_size for p in uninterrupted_dir.glob("ckpt-18.*"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 // 1024}k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, out, err = finish(start(disk, "--save_checkpoint_freq", "1", "--keep_checkpoints", "5"))
        assert code == 1
        assert "could not write a checkpoint to --model_dir" in err and "is intact" in err
        assert tf.train.latest_checkpoint(str(disk)).endswith("ckpt-6")
        assert final_state(disk)["epoch/.ATTRIBUTES/VARIABLE_VALUE"] == 1  # the first epoch's checkpoint reads
    finally:
        subprocess.run(["umount", str(disk)])


def test_unwritable_model_dir_is_refused_at_start(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, _, err = finish(start(blocker / "run"), timeout=120)
    assert code == 1
    assert f"--model_dir {blocker / 'run'} is not writable" in err


def lock_holder(model_dir):
    path = pathlib.Path(model_dir) / "train.lock"
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_a_second_run_on_the_same_model_dir_is_refused_until_the_first_dies(tmp_path):
    first = start(tmp_path, "--max_epochs", "50")
    wait_for(lambda: lock_holder(tmp_path).startswith(f"pid {first.pid} "), first)
    code, _, err = finish(start(tmp_path), timeout=120)
    assert code == 1
    assert "is in use by another training run (pid" in err and str(first.pid) in err
    first.kill()
    first.wait()
    # The kernel released the dead run's lock: the next run takes it at once.
    ModelDirLock(str(tmp_path)).acquire().release()


def damage(prefix, part, how):
    """Truncates a checkpoint's .index or data file to half, or flips one bit at each ninth of it (so some flip
    lands in the weights, not only in optimizer slots evaluation never reads); returns the file."""
    path = prefix + ".index" if part == "index" else next(iter(sorted(pathlib.Path(prefix).parent.glob(
        pathlib.Path(prefix).name + ".data-*"))))
    raw = pathlib.Path(path).read_bytes()
    if how == "truncated":
        pathlib.Path(path).write_bytes(raw[:len(raw) // 2])
    else:
        flipped = bytearray(raw)
        for k in range(1, 9):
            flipped[len(raw) * k // 9] ^= 0x10
        pathlib.Path(path).write_bytes(bytes(flipped))
    return str(path)


@pytest.mark.slow
def test_damaged_newest_checkpoint_resumes_from_the_newest_intact_one(tmp_path, uninterrupted_dir, uninterrupted):
    """The two newest checkpoints are damaged (a partial copy, a disk fault): ckpt-18's data file truncated,
    ckpt-15's index bit-flipped. The rerun names each file, sets them aside, trains epoch 3 again from ckpt-12
    and ends exactly as the uninterrupted run."""
    run = copied(uninterrupted_dir, tmp_path / "run")
    damaged = [damage(str(run / "ckpt-18"), "data", "truncated"), damage(str(run / "ckpt-15"), "index", "bit-flipped")]
    code, out, err = finish(start(run, "--save_checkpoint_freq", "1"))
    assert code == 0, err[-3000:]
    for step, path in zip((18, 15), damaged):
        assert f"Warning: Checkpoint {run / f'ckpt-{step}'} is damaged ({path}: " in out, out[-3000:]
        assert pathlib.Path(path + ".damaged").exists()  # kept for inspection, out of the way of new saves
    assert f"Falling back to {run / 'ckpt-12'}, the newest intact checkpoint" in out
    assert f"Resuming from {run / 'ckpt-12'}: epoch 3, example 0 of 48, step 12" in out
    assert tf.train.latest_checkpoint(str(run)) == str(run / "ckpt-18")
    assert_same_state(final_state(run), uninterrupted)


@pytest.mark.parametrize("part,how,command_line", [("data", "truncated", True), ("data", "bit-flipped", False),
                                                   ("index", "truncated", False), ("index", "bit-flipped", False)])
def test_evaluate_names_the_damaged_checkpoint_file_in_one_line(uninterrupted_dir, tmp_path, run_script, part, how,
                                                                command_line):
    """evaluate.py prints the error evaluate_checkpoint raises as its one error line: one kind of damage goes
    through the command line (with the other kept checkpoints to try named), the others call
    evaluate_checkpoint in this process (on a model_dir with no other checkpoint)."""
    model_dir = copied(uninterrupted_dir, tmp_path / "run", keep_until=None if command_line else 18)
    damaged = damage(tf.train.latest_checkpoint(str(model_dir)), part, how)
    if command_line:
        out = run_script("evaluate.py", "--ckpt", model_dir, timeout=300)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        [error] = [line for line in out.stderr.splitlines() if line.startswith("evaluate.py: error:")]
        assert error.endswith(f"; other checkpoints in {model_dir}: ckpt-12, ckpt-15"), error
    else:
        with pytest.raises(DamagedCheckpoint) as caught:
            evaluate_checkpoint(EvalConfig(ckpt=str(model_dir)), create_engine())
        error = str(caught.value)
        assert "\n" not in error and "no other checkpoint is kept beside it" in error, error
    assert f"--ckpt {model_dir}: checkpoint {model_dir / 'ckpt-18'} is damaged ({damaged}: " in error, error


@pytest.mark.parametrize("script", ["predict.py", "export.py"])
def test_predict_and_export_name_the_damaged_checkpoint_file_in_one_line(uninterrupted_dir, tmp_path, run_script,
                                                                         script):
    model_dir = copied(uninterrupted_dir, tmp_path / "run")
    damaged = damage(tf.train.latest_checkpoint(str(model_dir)), "data", "truncated")
    (tmp_path / "digit.png").write_bytes(testdata.encode(testdata.image_array(1, 32, 32), "png"))
    args = ["--image", tmp_path / "digit.png"] if script == "predict.py" else ["--output", tmp_path / "saved"]
    out = run_script(script, "--ckpt", model_dir, *args, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    [error] = [line for line in out.stderr.splitlines() if line.startswith(f"{script}: error:")]
    assert f"is damaged ({damaged}: Read less bytes than requested)" in error, error
    assert not (tmp_path / "saved").exists()


def _encoded(mode, size, fmt):
    import io

    from PIL import Image
    rng = np.random.default_rng(sum(size))
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode if mode != "CMYK" else None)
    if mode == "CMYK":
        image = Image.frombytes("CMYK", size, arr.tobytes())
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_odd_images_and_an_empty_shard_decode_to_three_channels_in_train_and_eval(tmp_path):
    import input as data
    from input import testdata

    odd = [(_encoded("L", (40, 30), "JPEG"), 1),        # grayscale
           (_encoded("CMYK", (40, 30), "JPEG"), 2),     # CMYK JPEG
           (_encoded("RGBA", (40, 30), "PNG"), 1),      # alpha channel
           (_encoded("RGB", (1, 1), "JPEG"), 2),        # 1x1
           (_encoded("RGB", (4000, 3000), "JPEG"), 1)]  # huge (12 Mpx)
    testdata.write_shards(str(tmp_path), "train", [odd, []])  # the second shard is empty
    testdata.write_shards(str(tmp_path), "validation", [odd, []])
    cfg = data.DataConfig(data_dir=str(tmp_path))
    info = data.open_dataset(cfg)
    assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (5, 5, 2)
    images, labels = next(iter(data.train_dataset(info, cfg, data.AugmentConfig(augmenter_name="autoaugment"),
                                                  batch_size=5, image_size=32, seed=1)))
    assert images.shape == (5, 32, 32, 3) and np.isfinite(images.numpy()).all()
    np.testing.assert_array_equal(labels.numpy().sum(1), 1.0)  # one-hot rows of the 2 classes
    seen = []
    for images, labels, mask in data.eval_dataset(info, cfg, batch_size=4, image_size=32):
        assert images.shape[1:] == (32, 32, 3) and np.isfinite(images.numpy()).all()
        seen += labels.numpy()[mask.numpy() > 0].tolist()
    assert sorted(seen) == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("field", ["variant", "model_overrides"])
def test_model_dir_of_another_network_is_refused(uninterrupted_dir, run_script, tmp_path, field):
    """Another variant through train.py's command line; other overrides (the same check) through train() here."""
    model_dir = copied(uninterrupted_dir, tmp_path / "run")  # the shared run stays untouched
    before = tf.train.latest_checkpoint(str(model_dir))
    if field == "variant":
        out = run_script("train.py", "--model_dir", model_dir, *TINY, "--arch", "efficientnet-b1", timeout=300)
        assert out.returncode == 1
        error = out.stderr
    else:
        with pytest.raises(ValueError) as caught:
            train(TrainConfig(model_dir=str(model_dir), train_img_size=32, steps_per_epoch=1,
                              model_overrides={"dropout_rate": 0.5}), create_engine())
        error = str(caught.value)
    assert f"holds a run with {field}=" in error and "cannot be loaded into this model" in error
    assert tf.train.latest_checkpoint(str(model_dir)) == before
