"""Horovod (optional, installed by scripts/install_horovod.sh) is built with TensorFlow + Gloo and can
allreduce across two local processes under horovodrun. Skipped when horovod is not installed.

What `horovodrun --check-build` lists for this build ([X] TensorFlow, [X] Gloo) is read in the ranks themselves:
their TensorFlow ops run, and Gloo is built in and in use. The command itself starts a new process that imports
TensorFlow for each line it prints (its cost: docs/horovod.md), for facts these ranks report anyway."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytest.importorskip(
    "horovod", reason="Horovod is optional and not installed; install it with scripts/install_horovod.sh")

pytestmark = pytest.mark.horovod
HERE = pathlib.Path(__file__).resolve().parent
PROBE = HERE / "hvd_allreduce_probe.py"
HANG = 900  # bounds a hung process; a passing run never waits for it (loaded machines need minutes)


def _horovodrun():
    beside_python = pathlib.Path(sys.executable).parent / "horovodrun"  # the venv's, not another install's
    path = str(beside_python) if beside_python.exists() else shutil.which("horovodrun")
    assert path, "horovod is importable but there is no horovodrun executable"
    return path


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_GLOO_TIMEOUT_SECONDS="20")
    env["PATH"] = str(pathlib.Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def test_two_rank_allreduce_under_horovodrun():
    cmd = [_horovodrun(), "-np", "2", "-H", "localhost:2", "--gloo", "--start-timeout", "60",
           sys.executable, str(PROBE)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG, env=_env(), cwd=HERE)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    results = {}
    for line in out.stdout.splitlines():  # horovodrun prefixes each line with "[rank]<stdout>:"
        if "HVD_PROBE " in line:
            r = json.loads(line.split("HVD_PROBE ", 1)[1])
            results[r["rank"]] = r
    assert sorted(results) == [0, 1], out.stdout[-4000:]
    # rank r contributes [r+1, 10(r+1), -1]
    for rank, r in results.items():
        assert r["size"] == 2 and r["local_size"] == 2 and r["local_rank"] == rank
        assert r["gloo_built"] and r["gloo_enabled"] and not r["mpi_enabled"]
        assert r["sum"] == [3.0, 30.0, -2.0]
        assert r["average"] == [1.5, 15.0, -1.0]
        assert r["average_fp16"] == [1.5, 15.0, -1.0]  # exactly representable in float16
        assert r["broadcast"] == [1.0, 10.0, -1.0]  # rank 0's tensor
        env = r["env"]
        assert env["HOROVOD_RANK"] == str(rank) and env["HOROVOD_SIZE"] == "2"
        assert env["HOROVOD_LOCAL_RANK"] == str(rank) and env["HOROVOD_LOCAL_SIZE"] == "2"
        assert "HOROVOD_GLOO_RENDEZVOUS_ADDR" in env and "HOROVOD_GLOO_RENDEZVOUS_PORT" in env
