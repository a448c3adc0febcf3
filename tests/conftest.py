"""Shared fixtures: a tiny trained checkpoint (made once per session) and a runner for entry-point scripts."""

import fcntl
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_script():
    """run_script("evaluate.py", "--ckpt", d, ...) -> CompletedProcess (stdout, stderr, returncode)."""
    return _run


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """model_dir of a 3-step B0 run on the embedded demo set (10 digit classes, 32 px) with EMA weights, made
    once for all test workers (the first to need it trains it under a lock; the others wait and reuse it).
    Tests read it; a test that needs to write into a model_dir copies it."""
    shared = tmp_path_factory.getbasetemp().parent  # the same directory for every xdist worker of this run
    model_dir = shared / "tiny_ckpt"
    with open(shared / "tiny_ckpt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model_dir / "checkpoint").exists():
            proc = _run("train.py", "--model_dir", model_dir, "--train_img_size", 32, "--eval_img_size", 32,
                        "--max_epochs", 1, "--warmup_epochs", 0, "--steps_per_epoch", 3, "--train_batch_size", 8,
                        "--eval_batch_size", 16, "--moving_average_decay", 0.99, "--mode", "train")
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
