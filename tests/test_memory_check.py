"""loops.bench.memory_check: its verdict on RSS samples with and without growth, and end to end on a small real
run (train.py child, RSS tables, verdict line, exit code)."""

import json
import os
import re
import subprocess
import sys

import pytest

from loops.bench.memory_check import MIB, _Phases, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _phases(tmp_path, train_peaks_mib):
    """A run of one stage with one training peak per epoch, as log.jsonl and RSS samples would show it."""
    log = tmp_path / "log.jsonl"
    log.write_text("")
    phases = _Phases(str(log))
    for epoch, peak in enumerate(train_peaks_mib, 1):
        phases.sample(int(peak * MIB))
        with open(log, "a") as f:
            f.write(json.dumps({"kind": "epoch", "epoch": epoch, "stage": 1, "image_size": 32}) + "\n")
        phases.sample(int(peak * MIB) - 1)
        with open(log, "a") as f:
            f.write(json.dumps({"kind": "eval", "epoch": epoch}) + "\n")
    return phases


@pytest.mark.parametrize("peaks,tolerance,code,verdict", [
    ([1000, 1010, 1020], 64, 0, "no growth: largest within-stage growth +20 MiB"),
    ([1000, 1050, 1100], 64, 2, "GROWTH: largest within-stage growth +100 MiB"),
])
def test_verdict_and_exit_code_follow_the_growth_within_a_stage(tmp_path, capsys, peaks, tolerance, code, verdict):
    assert report(_phases(tmp_path, peaks), int(max(peaks) * MIB), tolerance) == code
    assert f"verdict: {verdict} (tolerance {tolerance} MiB)" in capsys.readouterr().out


@pytest.mark.long
def test_memory_check_prints_per_epoch_and_per_stage_rss(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "loops.bench.memory_check", "--img_size", "32", "--base_img_size", "24",
         "--epochs_per_stage", "2", "--steps_per_epoch", "1", "--batch_size", "4", "--eval_batch_size", "128",
         "--tolerance_mib", "100000", "--model_dir", str(tmp_path), "--",
         "--mparams", "depth_coefficient=0.1,width_coefficient=0.25"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    epoch_rows = re.findall(r"^\| (\d) \| (\d) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", out, re.M)
    assert [(e, s, size) for e, s, size, *_ in epoch_rows] == [
        ("1", "1", "28"), ("2", "1", "28"), ("3", "2", "32"), ("4", "2", "32")]
    # A TF process holds hundreds of MiB; every phase was sampled.
    assert all(int(v) > 100 for row in epoch_rows for v in row[3:])
    stage_rows = re.findall(r"^\| (\d) \| (\d+) \| 2 \| (\d+) \| ([+-]\d+) \|$", out, re.M)
    assert [r[:2] for r in stage_rows] == [("1", "28"), ("2", "32")]
    peak = int(re.search(r"peak RSS of the run: (\d+) MiB", out).group(1))
    assert peak >= max(int(v) for row in epoch_rows for v in row[3:])
    assert re.search(r"^verdict: no growth: largest within-stage growth [+-]\d+ MiB \(tolerance 100000 MiB\)$", out,
                     re.M)
    assert os.path.exists(tmp_path / "summary.json")
