"""train.py --init_checkpoint and the fine-tuning controls (loops/warm_start.py, loops/freezing.py), checked by
what a run does: which variables a real train step changes, BatchNorm statistics where frozen, the classifier
kept or replaced, the EMA starting from the loaded weights, a resumed run ignoring the init file, and a
one-line error for each bad file.

The fine-tuning controls do not depend on the network or on the file's format, so the runs that train a step
start the tests' tiny network from our own checkpoint format, and so do the runs on several replicas and workers
(which process reads the file and which copies get its values does not depend on the format either); Keras
Applications files of the full B0 are loaded by the error cases they concern."""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import efficientnet
import preloaded
from conftest import TINY_MPARAMS
from efficientnet import pretrained
from efficientnet.serving import with_trained_like_statistics
from loops import freezing
from loops.checkpoints import make_checkpoint
from loops.config import TrainConfig
from loops.optimization import decayed_variables
from loops.parallel.distribution import create_engine
from loops.stages import plan_stages
from loops.steps import make_train_step
from loops.training import _train_dataset, build_run

SEVEN = 7  # a class count other than the demo set's 10
TINY = efficientnet.parse_overrides(TINY_MPARAMS)


def config(model_dir, **settings) -> TrainConfig:
    """The tiny run of the embedded demo set (10 digit classes, 32 px), 2 steps."""
    return TrainConfig(model_dir=str(model_dir), mode="train", train_img_size=32, eval_img_size=32,
                       train_batch_size=8, eval_batch_size=16, steps_per_epoch=2, max_epochs=1, warmup_epochs=0,
                       moving_average_decay=0.99, lr_init=0.05, **settings)


@pytest.fixture(scope="module")
def engine():
    return create_engine("tf_distribute")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """A Keras Applications B0 weights file with 7 classes and trained-looking statistics, and its values."""
    model = with_trained_like_statistics(efficientnet.build_model("b0", SEVEN), seed=21)
    path = pretrained.save_keras_weights(model, str(tmp_path_factory.mktemp("keras") / "b0_7.h5"))
    return path, {w.path: w.numpy() for w in model.weights}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """Our checkpoint of the tiny network with 7 classes and trained-looking statistics, and its values."""
    model = with_trained_like_statistics(efficientnet.build_model("b0", SEVEN, **TINY), seed=23)
    folder = tmp_path_factory.mktemp("tiny7")
    make_checkpoint(model).save(str(folder / "ckpt"))
    return str(folder), values(model)


def values(model) -> dict:
    return {w.path: w.numpy() for w in model.weights}


def one_step(run):
    """One real train step of the run's first stage, on its own data pipeline."""
    step = make_train_step(run.state, run.cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
    step(iter(_train_dataset(run, plan_stages(run.cfg)[0], 0, skip_examples=0, steps=1)))


def close(run):
    run.reporter.close()
    run.saver.close()
    run.lock.release()


def changed(before: dict, after: dict) -> list[str]:
    return sorted(p for p in before if not np.array_equal(before[p], after[p]))


def test_new_classifier_on_a_frozen_backbone_is_all_a_train_step_changes(tmp_path, engine, tiny_file, capsys):
    path, source = tiny_file
    run = build_run(config(tmp_path, init_checkpoint=path, init_checkpoint_replace_head=True,
                           freeze_backbone=True, model_overrides=TINY), engine)
    try:
        out = capsys.readouterr().out
        assert "classifier replaced: the file has 7 classes, the model 10" in out
        model = run.state.model
        start = values(model)
        for name, value in source.items():
            if not name.startswith("predictions/"):
                np.testing.assert_array_equal(start[name], value, err_msg=name)
        # The EMA starts from the loaded weights, not from the initialisation.
        for weight, shadow in zip(model.weights, run.state.ema.shadows):
            np.testing.assert_array_equal(shadow.numpy(), start[weight.path], err_msg=weight.path)
        assert [v.path for v in model.trainable_variables] == ["predictions/kernel", "predictions/bias"]

        one_step(run)
        after = values(model)
        # BatchNorm statistics included: the frozen backbone ran in inference mode.
        assert changed(start, after) == ["predictions/bias", "predictions/kernel"]
        shadows = {w.path: s.numpy() for w, s in zip(model.weights, run.state.ema.shadows)}
        assert changed(start, shadows) == ["predictions/bias", "predictions/kernel"]
        assert int(run.state.optimizer.iterations.numpy()) == 1
    finally:
        close(run)


def test_trainable_from_block6a_freezes_everything_before_it(tmp_path, engine, tiny_file):
    path, _ = tiny_file
    # Stage name block6 means its first block, block6a. The classifier is excluded (fresh) by pattern.
    run = build_run(config(tmp_path, init_checkpoint=path, init_checkpoint_exclude=("predictions",),
                           trainable_from="block6", model_overrides=TINY), engine)
    try:
        model = run.state.model
        start = values(model)
        one_step(run)
        moved = set(changed(start, values(model)))
        names = [layer.name for layer in model.layers]
        frozen = {w.path for layer in model.layers[:names.index("block6a_expand_conv")] for w in layer.weights}
        # The tiny network's stem (5 weights), block1a (14) and the expanding blocks 2a to 5a (19 each).
        assert len(frozen) == 5 + 14 + 4 * 19 and not moved & frozen
        # Every variable from block6a on trains, BatchNorm moving statistics updated from the batch.
        assert moved == set(start) - frozen
        assert "block6a_expand_bn/moving_mean" in moved and "block5a_project_bn/moving_mean" not in moved
        # Frozen variables have no optimizer slots and no L2 term.
        trained = len(model.trainable_variables)
        assert len(run.state.optimizer.variables) == 1 + 2 * trained  # the step, RMSprop's rms and momentum
        assert {v.path for v in decayed_variables(model)} <= {v.path for v in model.trainable_variables}
    finally:
        close(run)


def test_frozen_part_computes_in_training_what_it_computes_at_evaluation():
    model = efficientnet.build_model("b0", 10, drop_connect_rate=0.5, dropout_rate=0.5, **TINY)
    with_trained_like_statistics(model, seed=3)
    images = tf.random.stateless_uniform((4, 32, 32, 3), (1, 2), maxval=255.0)
    assert not np.allclose(model(images, training=True), model(images, training=False))
    frozen = freezing.freeze(model, "predictions")
    assert frozen[0] == "stem_conv" and frozen[-1] == "top_bn"
    np.testing.assert_allclose(model(images, training=True), model(images, training=False), rtol=1e-6, atol=1e-6)


def test_resumed_run_ignores_init_checkpoint_and_keeps_its_own_weights(tmp_path, engine, tiny_file, capsys):
    path, _ = tiny_file
    first = build_run(config(tmp_path, model_overrides=TINY), engine)
    try:
        saved = first.save()
        own = values(first.state.model)
    finally:
        close(first)
    capsys.readouterr()
    run = build_run(config(tmp_path, init_checkpoint=path, init_checkpoint_replace_head=True,
                           model_overrides=TINY), engine)
    try:
        assert f"--init_checkpoint {path} ignored: resuming from {saved}" in capsys.readouterr().out
        assert changed(own, values(run.state.model)) == []
    finally:
        close(run)


@pytest.mark.parametrize("case", ["missing", "truncated", "other_variant", "class_count", "exclude_typo"])
def test_bad_init_checkpoint_is_a_one_line_error_before_anything_is_written(tmp_path, engine, keras_file, tiny_file,
                                                                           case):
    """Each case in a run of the tiny network with its 7-class file, but a truncated Keras Applications file
    and, for another variant, the B0 one in a run of B1."""
    path = tiny_file[0]
    settings, error, fragments = {"init_checkpoint": path, "model_overrides": TINY}, ValueError, []
    if case == "missing":
        settings["init_checkpoint"] = str(tmp_path / "nowhere.h5")
        error, fragments = FileNotFoundError, ["--init_checkpoint", "nowhere.h5", "no such file"]
    elif case == "truncated":
        data = open(keras_file[0], "rb").read()
        cut = tmp_path / "cut.h5"
        cut.write_bytes(data[: len(data) // 2])
        settings["init_checkpoint"] = str(cut)
        fragments = ["--init_checkpoint", str(cut), "unreadable HDF5 file"]
    elif case == "other_variant":
        path = keras_file[0]
        settings.update(init_checkpoint=path, variant="b1", init_checkpoint_replace_head=True, model_overrides={})
        # B1 repeats B0's first stage twice: block1b is the first variable B0's file has no value for.
        fragments = ["--init_checkpoint", path, "block1b_dwconv/kernel does not fit efficientnet-b1",
                     "expected shape (3, 3, 16, 1), found nothing"]
    elif case == "class_count":
        fragments = [f"--init_checkpoint {path} has a 7-class classifier, this run 10 classes",
                     "--init_checkpoint_replace_head"]
    else:
        settings["init_checkpoint_exclude"] = ("block9",)
        fragments = ["--init_checkpoint_exclude", "'block9' matches no variable"]
    model_dir = tmp_path / "run"
    with pytest.raises(error) as excinfo:
        build_run(config(model_dir, **settings), engine)
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert tf.train.latest_checkpoint(str(model_dir)) is None


@pytest.mark.slow
def test_train_py_fine_tunes_our_checkpoint_and_exits_1_with_one_line_for_a_bad_head(tiny_checkpoint, keras_file,
                                                                                      run_script, tmp_path):
    """The whole command: our train.py checkpoint (trainable weights saved under the optimizer's keys, EMA
    shadows) as the start of a run that trains from block6a on, its raw weights chosen. The checkpoint is the
    tests' tiny network (one block per stage): 5 weights in the stem, 14 in block1a, 19 in each of the 6
    expanding blocks, 5 in the head, 2 in the classifier; from block6a on, 2 x 13 trainable in the blocks and
    1 + 2 + 2 after them."""
    flags = ["--train_img_size", 32, "--eval_img_size", 32, "--max_epochs", 1, "--warmup_epochs", 0,
             "--steps_per_epoch", 2, "--train_batch_size", 8, "--moving_average_decay", 0.99, "--mode", "train"]
    proc = run_script("train.py", "--model_dir", tmp_path / "ft", *flags, "--mparams", TINY_MPARAMS,
                      "--init_checkpoint", tiny_checkpoint, "--init_checkpoint_weights", "raw",
                      "--trainable_from", "block6a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"loaded 140 variables from {tiny_checkpoint} (ours, raw weights); classifier loaded" in proc.stdout
    assert "Fine-tuning: 31 of 140 variables train (from block6a on)" in proc.stdout
    tiny = efficientnet.parse_overrides(TINY_MPARAMS)
    start, end = (efficientnet.build_model("b0", 10, **tiny) for _ in range(2))
    pretrained.load_into(start, tiny_checkpoint, weights="raw")
    report = pretrained.load_into(end, str(tmp_path / "ft"), weights="raw")
    assert report.assigned == 140
    moved = changed(values(start), values(end))
    assert moved and all(name >= "block6a" and not name.startswith("stem") for name in moved), moved
    step = tf.train.load_checkpoint(str(tmp_path / "ft" / "ckpt-2")).get_tensor(
        "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
    assert int(step) == 2  # the step (and with it the schedule) started anew

    # The Keras file holds the full B0, which this run builds; its classifier has 7 classes.
    proc = run_script("train.py", "--model_dir", tmp_path / "bad", *flags, "--init_checkpoint", keras_file[0])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train.py: error: --init_checkpoint {keras_file[0]} has a 7-class classifier, this run 10 classes; pass "
        "--init_checkpoint_replace_head to start a fresh classifier")
    assert tf.train.latest_checkpoint(str(tmp_path / "bad")) is None


PROBE = str(pathlib.Path(__file__).resolve().parent / "warm_start_probe.py")


@pytest.fixture(scope="module")
def ten_class_file(tmp_path_factory):
    """Our checkpoint of the tiny network with the demo set's 10 classes and trained-looking statistics, and its
    values."""
    model = with_trained_like_statistics(efficientnet.build_model("b0", 10, **TINY), seed=22)
    folder = tmp_path_factory.mktemp("tiny10")
    make_checkpoint(model).save(str(folder / "ckpt"))
    return str(folder), values(model)


def every_copy_is_the_files(dump: dict, source: dict, replicas: int):
    assert len(dump) == 2 * replicas * len(source)
    for name, value in source.items():
        for r in range(replicas):
            np.testing.assert_array_equal(dump[f"{name}@{r}"], value, err_msg=f"{name} replica {r}")
            np.testing.assert_array_equal(dump[f"ema:{name}@{r}"], value, err_msg=f"EMA {name} replica {r}")


@pytest.mark.slow
def test_mirrored_replicas_and_their_ema_all_start_from_the_file(ten_class_file, tmp_path):
    path, source = ten_class_file
    proc = preloaded.run([PROBE, "mirrored", tmp_path, path, TINY_MPARAMS],
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 replicas" in proc.stdout
    with np.load(tmp_path / "vars-mirrored-0.npz") as dump:
        every_copy_is_the_files(dict(dump), source, replicas=2)


@pytest.mark.slow
def test_multi_worker_non_chief_gets_the_chiefs_loaded_weights_without_reading_the_file(ten_class_file, tmp_path):
    """Only the chief reads --init_checkpoint (the other worker's path does not even exist); build_run's
    engine.synchronize hands every worker the loaded weights and EMA shadows."""
    from test_distributed import _free_ports, _stop

    path, source = ten_class_file
    ports = _free_ports(2)
    procs = []
    for i, init in enumerate([path, str(tmp_path / "not_on_this_worker")]):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": i}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
        procs.append(preloaded.Process([PROBE, "worker", tmp_path, init, TINY_MPARAMS], env=env,
                                       output=tmp_path / f"worker-{i}.log", new_session=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        _stop(procs)
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "Initialized from --init_checkpoint" in outputs[0] and "Initialized" not in outputs[1]
    for worker in (0, 1):
        with np.load(tmp_path / f"vars-worker-{worker}.npz") as dump:
            every_copy_is_the_files(dict(dump), source, replicas=1)
