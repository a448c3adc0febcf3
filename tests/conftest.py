"""Shared fixtures: a tiny trained checkpoint (made once per session) and a runner for entry-point scripts."""

import fcntl
import gc
import importlib.util
import os

import pytest

import preloaded

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Files whose tests take minutes, longest first: in a serial run (CI's long tests) they start first, so that the run
# ends with short tests instead of one of them running alone after the other runs have finished.
LONGEST_FIRST = ("test_demo.py", "test_training_runs.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # a stable sort: the rest keep their order


def pytest_collection_finish(session):
    """What collection imported (TensorFlow, Keras, the test modules) stays for the whole run: frozen, it is left
    out of the collector's full collections, which otherwise scan its millions of objects many times per run."""
    gc.freeze()


def _run(script, *args, timeout=600):
    return preloaded.run([script, *args], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=timeout)


@pytest.fixture(scope="session")
def run_script():
    """run_script("evaluate.py", "--ckpt", d, ...) -> CompletedProcess (stdout, stderr, returncode)."""
    return _run


# The network of tiny_checkpoint: B0 cut to one block per stage (7 blocks) at a quarter of its width. Its users
# test mechanics (evaluation, prediction, export and its numerics, damage, fine-tuning), which do not depend on
# the network's size; tracing and converting the full B0 would make each of them several times slower.
TINY_MPARAMS = "depth_coefficient=0.1,width_coefficient=0.25"


def ratio_fits_its_rounded_figures(ratio: float, numerator: float, denominator: float, half: float) -> bool:
    """Whether a printed ratio (rounded to 0.01) is the quotient of two figures a table printed rounded to +-half:
    it lies within what the rounded figures allow. Small figures (a tiny network's 0.2 ms) make that interval
    wide, so no fixed relative slack fits."""
    return ((numerator - half) / (denominator + half) - 0.005 <= ratio
            <= (numerator + half) / max(denominator - half, 1e-9) + 0.005)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """model_dir of a 3-step run (batch 16) of the tiny network (TINY_MPARAMS) on the embedded demo set (10 digit
    classes, 32 px) with EMA weights, made once for all test workers (the first to need it trains it under a
    lock; the others wait and reuse it). Tests read it; a test that needs to write into a model_dir copies it.

    BatchNorm momentum 0.1 and EMA decay 0.5 let its evaluation-mode network (moving statistics, EMA weights)
    follow those 3 steps: with the defaults it would still be the initial network, whose nearly uniform
    probabilities an int8 copy cannot rank as it does."""
    # Under xdist the parent of a worker's basetemp is this run's own directory, shared by its workers; without
    # xdist it would be the user's directory of every pytest run, so the session's basetemp is used instead.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    model_dir = shared / "tiny_ckpt"
    with open(shared / "tiny_ckpt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model_dir / "checkpoint").exists():
            proc = _run("train.py", "--model_dir", model_dir, "--train_img_size", 32, "--eval_img_size", 32,
                        "--max_epochs", 1, "--warmup_epochs", 0, "--steps_per_epoch", 3, "--train_batch_size", 16,
                        "--eval_batch_size", 64, "--moving_average_decay", 0.5, "--mode", "train",
                        "--mparams", f"{TINY_MPARAMS},bn_momentum=0.1")
            assert proc.returncode == 0, proc.stderr[-3000:]
    return str(model_dir)


@pytest.fixture(scope="session")
def export_runtimes():
    """Skips a test when the optional requirements-export.txt is not installed, unless
    EFFICIENTNET_REQUIRE_EXPORT=1 (CI installs it), where that is a failure."""
    from loops.serving import dependencies

    modules = dependencies.ONNX_EXPORT + dependencies.ONNX_RUNTIME + dependencies.TFLITE_RUNTIME
    missing = [package for module, package in modules if importlib.util.find_spec(module) is None]
    if missing:
        reason = f"requirements-export.txt is not installed (missing {', '.join(missing)})"
        if os.environ.get("EFFICIENTNET_REQUIRE_EXPORT") == "1":
            pytest.fail(f"EFFICIENTNET_REQUIRE_EXPORT=1 but {reason}")
        pytest.skip(reason)
