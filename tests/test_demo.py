"""The README's main job: its train.py command, run as written (but for the model_dir), learns the demo set.
Long (2 minutes on 2 idle cores): its own file, so a test worker runs it while the other runs the other long files."""

import json
import pathlib

import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_demo_flags():
    text = (ROOT / "README.md").read_text()
    command = [line for line in text.splitlines() if "train.py" in line and line.startswith("    python3 -m venv")][0]
    flags = command.split("train.py", 1)[1].split()
    return [f for i, f in enumerate(flags)  # the test chooses the model_dir
            if not f.startswith("--model_dir") and not (i and flags[i - 1] == "--model_dir")]


@pytest.mark.long
@pytest.mark.slow
def test_readme_demo_command_reaches_the_issues_bar_of_0_79_top1(tmp_path, run_script):
    out = run_script("train.py", "--model_dir", tmp_path, *_readme_demo_flags(), timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "embedded demo dataset" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_eval_accuracy_top_1"] >= 0.79  # 10 classes: chance is 0.1; measured 0.97-0.99
    assert summary["eval_examples"] == 359
    assert tf.train.latest_checkpoint(str(tmp_path))
    assert list((tmp_path / "tensorboard").iterdir())
