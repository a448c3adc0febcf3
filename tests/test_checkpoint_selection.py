"""Checkpoints users pick from: the best N by evaluation top-1 kept beside the latest (--keep_best_checkpoints),
and several averaged into one evaluated checkpoint (python -m loops.average_checkpoints)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from loops.restore import restore


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, run_script):
    """3 epochs of 2 steps on the demo set, evaluated (raw and EMA) after each, the best 2 kept; a B0 cut to 7
    blocks at a quarter width (which checkpoints are kept and averaged does not depend on the network)."""
    model_dir = tmp_path_factory.mktemp("best_run")
    out = run_script("train.py", "--model_dir", model_dir, "--mode", "train_and_eval", "--train_img_size", 32,
                     "--eval_img_size", 32, "--train_batch_size", 8, "--eval_batch_size", 128, "--steps_per_epoch", 2,
                     "--max_epochs", 3, "--warmup_epochs", 0, "--moving_average_decay", 0.9, "--lr_init", 0.05,
                     "--mparams", "depth_coefficient=0.1,width_coefficient=0.25", "--keep_best_checkpoints", 2,
                     timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return model_dir


def _evaluations(model_dir):
    records = [json.loads(line) for line in (model_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"]


@pytest.mark.slow
def test_kept_best_checkpoints_are_the_two_best_evaluations(best_run):
    evaluations = _evaluations(best_run)
    assert [e["step"] for e in evaluations] == [2, 4, 6]
    # Each evaluation's score is the better of raw and EMA; on a tie the earlier one ranks first.
    scores = [(max(e["eval_accuracy_top_1"], e["eval_accuracy_top_1_ema"]), e["step"]) for e in evaluations]
    expected = sorted(scores, key=lambda s: (-s[0], s[1]))[:2]
    kept = json.loads((best_run / "best_checkpoints.json").read_text())
    assert [(k["eval_accuracy_top_1"], k["step"]) for k in kept] == expected
    for k in kept:
        evaluation = next(e for e in evaluations if e["step"] == k["step"])
        assert k["weights"] == evaluation["best_weights"] and k["epoch"] == evaluation["epoch"]
    assert sorted(p.name for p in best_run.glob("best-*.index")) == sorted(f"best-{s}.index" for _, s in expected)
    assert json.loads((best_run / "summary.json").read_text())["best_checkpoints"] == kept
    assert tf.train.latest_checkpoint(str(best_run)).endswith("ckpt-6")  # the latest ones are kept as before


@pytest.mark.slow
def test_average_checkpoints_averages_the_best_ema_weights_and_evaluates_them(best_run, run_script, tmp_path):
    out = run_script("-m", "loops.average_checkpoints", "--ckpts", best_run, "--output", tmp_path / "averaged",
                     "--eval_batch_size", 128, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    kept = json.loads((best_run / "best_checkpoints.json").read_text())
    assert f"Averaged the ema weights of 2 checkpoints ({', '.join(k['checkpoint'].split('/')[-1] for k in kept)})" \
        in out.stdout
    sources = []
    for k in kept:
        r = restore(k["checkpoint"])
        r.use_ema_weights()
        sources.append(r.model.get_weights())
    averaged = restore(str(tmp_path / "averaged"))
    assert not averaged.has_ema
    for got, *parts in zip(averaged.model.get_weights(), *sources):
        np.testing.assert_allclose(got, np.mean(np.asarray(parts, np.float64), axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(sources[0][0], sources[1][0])  # two different checkpoints were averaged
    results = json.loads((tmp_path / "averaged" / "eval-ckpt-0.json").read_text())
    assert results["eval_examples"] == 359 and results["weights"] == "raw"
    assert 0.0 <= results["eval_accuracy_top_1"] <= 1.0
