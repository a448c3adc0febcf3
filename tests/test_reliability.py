"""Faults caused for real against real train.py processes: signals, kills, NaNs, a full disk, a second run."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parent.parent
# 2 epochs x 6 steps at 32 px on the demo set of a B0 cut to 7 blocks at a quarter width (these faults concern
# the loop, not the network; tracing the full B0 would double each run), no dropout so runs compare bit for bit.
TINY = ["--train_img_size", "32", "--eval_img_size", "32", "--train_batch_size", "8", "--steps_per_epoch", "6",
        "--max_epochs", "2", "--warmup_epochs", "1", "--mode", "train", "--log_steps", "1",
        "--moving_average_decay", "0.99",
        "--mparams", "dropout_rate=0,drop_connect_rate=0,depth_coefficient=0.1,width_coefficient=0.25"]


def start(model_dir, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "train.py", "--model_dir", str(model_dir), *TINY, *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def train_records(model_dir):
    path = pathlib.Path(model_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def wait_for(predicate, proc, timeout=300):
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
def uninterrupted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    code, _, err = finish(start(model_dir))
    assert code == 0, err[-3000:]
    return final_state(model_dir)


def assert_same_state(state, expected):
    assert state.keys() == expected.keys() and len(state) > 400
    for name in expected:
        np.testing.assert_allclose(state[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_mid_epoch_and_resumes_exactly(tmp_path, uninterrupted, signum):
    proc = start(tmp_path)
    wait_for(lambda: len(train_records(tmp_path)) >= 3, proc)
    proc.send_signal(signum)
    code, out, _ = finish(proc)
    assert code == 75
    assert f"Stopped by {signal.Signals(signum).name}" in out
    stopped_at = tf.train.load_checkpoint(str(tmp_path)).get_tensor("examples_in_epoch/.ATTRIBUTES/VARIABLE_VALUE") // 8
    assert 3 <= stopped_at < 12  # a step after the signal, not an epoch boundary's worth later
    code, out, err = finish(start(tmp_path))
    assert code == 0, err[-3000:]
    assert "Resuming from" in out
    assert_same_state(final_state(tmp_path), uninterrupted)  # same step, same LR schedule, same EMA


@pytest.mark.slow
def test_sigkill_while_checkpointing_every_step_resumes_from_the_last_complete_checkpoint(tmp_path, uninterrupted):
    proc = start(tmp_path, "--save_checkpoint_steps", "1")
    wait_for(lambda: len(train_records(tmp_path)) >= 4, proc)
    time.sleep(np.random.default_rng().uniform(0.0, 0.5))  # anywhere in the next steps, mid-write included
    proc.kill()
    proc.wait()
    logged = len(train_records(tmp_path))
    code, out, err = finish(start(tmp_path, "--save_checkpoint_steps", "1"))
    assert code == 0, err[-3000:]
    resumed_step = int(out.split("Resuming from", 1)[1].split("step ", 1)[1].split()[0])
    assert resumed_step >= logged - 1  # at most one checkpoint interval (one step) was lost
    assert_same_state(final_state(tmp_path), uninterrupted)


@pytest.mark.slow
def test_persistent_non_finite_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
    code, _, err = finish(start(tmp_path, "--max_epochs", "1", "--optimizer", "sgd"))
    assert code == 0, err[-3000:]
    good = tf.train.latest_checkpoint(str(tmp_path))
    good_files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name.startswith("ckpt")}
    # Same run, continued for a second epoch with a learning rate that blows the weights up.
    code, _, err = finish(start(tmp_path, "--max_epochs", "2", "--optimizer", "sgd", "--lr_init", "1e9",
                                "--max_bad_steps", "2"))
    assert code == 1
    assert "consecutive steps, up to step" in err and "epoch 2" in err
    assert tf.train.latest_checkpoint(str(tmp_path)) == good
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name.startswith("ckpt")} == good_files


@pytest.mark.slow
def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for one checkpoint of this model (about 65 MB with optimizer slots and EMA), not for two.
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, out, err = finish(start(disk, "--save_checkpoint_freq", "1", "--keep_checkpoints", "5",
                                      "--mparams", "dropout_rate=0,drop_connect_rate=0"))  # the full B0
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


@pytest.mark.slow
def test_a_second_run_on_the_same_model_dir_is_refused_until_the_first_dies(tmp_path):
    first = start(tmp_path, "--max_epochs", "50")
    wait_for(lambda: len(train_records(tmp_path)) >= 1, first)
    code, _, err = finish(start(tmp_path), timeout=120)
    assert code == 1
    assert "is in use by another training run (pid" in err and str(first.pid) in err
    first.kill()
    first.wait()
    # The kernel released the dead run's lock: the next run starts (and resumes) at once.
    logged = len(train_records(tmp_path))
    third = start(tmp_path, "--max_epochs", "50")
    wait_for(lambda: len(train_records(tmp_path)) > logged, third)
    third.kill()
    third.wait()


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


@pytest.fixture(scope="module")
def checkpoint_per_epoch(tmp_path_factory):
    """The uninterrupted run's model_dir, with a checkpoint after each epoch: ckpt-6 and ckpt-12."""
    model_dir = tmp_path_factory.mktemp("checkpoint_per_epoch")
    code, _, err = finish(start(model_dir, "--save_checkpoint_freq", "1"))
    assert code == 0, err[-3000:]
    return model_dir


@pytest.mark.slow
@pytest.mark.parametrize("part,how", [("data", "truncated"), ("index", "bit-flipped")])
def test_damaged_newest_checkpoint_resumes_from_the_newest_intact_one(tmp_path, checkpoint_per_epoch, uninterrupted,
                                                                      part, how):
    """The final checkpoint is damaged (a partial copy, a disk fault): the rerun names the file, sets it aside,
    trains epoch 2 again from ckpt-6 and ends exactly as the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint_per_epoch, run)
    damaged = damage(str(run / "ckpt-12"), part, how)
    code, out, err = finish(start(run, "--save_checkpoint_freq", "1"))
    assert code == 0, err[-3000:]
    assert f"Warning: Checkpoint {run / 'ckpt-12'} is damaged ({damaged}: " in out, out[-3000:]
    assert f"Falling back to {run / 'ckpt-6'}, the newest intact checkpoint" in out
    assert f"Resuming from {run / 'ckpt-6'}: epoch 2, example 0 of 48, step 6" in out
    assert pathlib.Path(damaged + ".damaged").exists()  # kept for inspection, out of the way of new saves
    assert tf.train.latest_checkpoint(str(run)) == str(run / "ckpt-12")
    assert_same_state(final_state(run), uninterrupted)


@pytest.mark.parametrize("part,how", [("data", "truncated"), ("data", "bit-flipped"), ("index", "truncated"),
                                      ("index", "bit-flipped")])
def test_evaluate_names_the_damaged_checkpoint_file_in_one_line(tiny_checkpoint, tmp_path, run_script, part, how):
    model_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, model_dir)
    damaged = damage(tf.train.latest_checkpoint(str(model_dir)), part, how)
    out = run_script("evaluate.py", "--ckpt", model_dir, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    [error] = [line for line in out.stderr.splitlines() if line.startswith("evaluate.py: error:")]
    assert f"is damaged ({damaged}: " in error and "no other checkpoint is kept beside it" in error, error


@pytest.mark.parametrize("script", ["predict.py", "export.py"])
def test_predict_and_export_name_the_damaged_checkpoint_file_in_one_line(tiny_checkpoint, tmp_path, run_script,
                                                                         script):
    from input import testdata

    model_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, model_dir)
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


@pytest.mark.parametrize("flags,field", [(["--arch", "efficientnet-b1"], "variant"),
                                         (["--mparams", "dropout_rate=0.5"], "model_overrides")])
def test_model_dir_of_another_network_is_refused(tiny_checkpoint, run_script, tmp_path, flags, field):
    model_dir = shutil.copytree(tiny_checkpoint, tmp_path / "run")  # the shared checkpoint stays untouched
    before = tf.train.latest_checkpoint(str(model_dir))
    out = run_script("train.py", "--model_dir", model_dir, "--train_img_size", 32, "--steps_per_epoch", 1,
                     *flags, timeout=300)
    assert out.returncode == 1
    assert f"holds a run with {field}=" in out.stderr and "cannot be loaded into this model" in out.stderr
    assert tf.train.latest_checkpoint(str(model_dir)) == before
