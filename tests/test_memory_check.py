"""loops.bench.memory_check end to end on a small run: real train.py child, RSS tables and a verdict line."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_memory_check_prints_per_epoch_and_per_stage_rss(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "loops.bench.memory_check", "--img_size", "32", "--base_img_size", "24",
         "--epochs_per_stage", "2", "--steps_per_epoch", "1", "--batch_size", "4", "--eval_batch_size", "128",
         "--model_dir", str(tmp_path), "--", "--mparams", "depth_coefficient=0.1,width_coefficient=0.25"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode in (0, 2), proc.stdout[-2000:] + proc.stderr[-3000:]
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
    verdict = re.search(r"^verdict: (no growth|GROWTH): largest within-stage growth ([+-]\d+) MiB", out, re.M)
    assert verdict and (verdict.group(1) == "GROWTH") == (proc.returncode == 2)
    assert os.path.exists(tmp_path / "summary.json")
