"""evaluate.py: metrics against a hand computation on the same predictions, true latency percentiles,
distributed evaluation counting every example once, and clear errors."""

import json
import os
import threading
import weakref

import numpy as np
import pytest
import tensorflow as tf

import input as data
import preloaded
from input.config import DataConfig
from loops.checkpoints import RunSpec
from loops.config import EvalConfig
from loops.evaluation import EvalResult, evaluate, latency_percentiles
from loops.iterators import IteratorRelease
from loops.offline_evaluation import METRICS, evaluate_checkpoint, results_table
from loops.parallel.distribution import create_engine
from loops.restore import restore


def test_percentiles_are_true_percentiles_of_a_known_latency_list():
    seconds = [i / 1000.0 for i in range(1, 101)]  # 1..100 ms
    p = latency_percentiles(seconds)
    assert p["latency_avg"] == pytest.approx(50.5)
    assert p["latency_50pct"] == pytest.approx(50.5)
    assert p["latency_90pct"] == pytest.approx(90.1)
    assert p["latency_95pct"] == pytest.approx(95.05)
    assert p["latency_99pct"] == pytest.approx(99.01)
    # The reference's "p90" (mean of the fastest 90%) would be 45.5 ms, below the average.
    assert p["latency_99pct"] >= p["latency_95pct"] >= p["latency_90pct"] >= p["latency_50pct"]
    assert p["latency_90pct"] > p["latency_avg"]


def test_eval_result_metrics_use_the_reference_names():
    r = EvalResult(loss=1.0, top1=0.5, top5=0.9, count=40, batch_seconds=(0.1, 0.2, 0.3, 0.4), batch_size=10)
    m = r.metrics(num_devices=2, suffix="_ema")
    assert m["avg_exp_per_second_eval_ema"] == pytest.approx(40 / 1.0)
    assert m["avg_exp_per_second_eval_per_GPU_ema"] == pytest.approx(20.0)
    assert m["avg_time_per_exp_eval_ema"] == pytest.approx(25.0)  # ms per example
    assert m["latency_90pct_ema"] == pytest.approx(370.0)
    assert set(METRICS) <= {k[:-4] for k in m}


def test_each_evaluation_pass_counts_its_batches_and_its_iterator_is_destroyed_off_the_calling_thread():
    destroyed_on = []

    class Recording(IteratorRelease):
        def drop(self, holder):
            weakref.finalize(holder[0], lambda: destroyed_on.append(threading.current_thread().name))
            super().drop(holder)

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    masks = tf.data.Dataset.from_tensor_slices([1.0] * 10 + [0.0] * 2).batch(4)  # 10 examples, padded to 12
    dataset = strategy.experimental_distribute_dataset(masks.map(lambda m: (m,), num_parallel_calls=tf.data.AUTOTUNE))

    def eval_step(batch):
        count = tf.reduce_sum(batch[0])
        return {"loss": count, "top1": count / 2, "top5": count, "count": count}

    release = Recording()
    results = [evaluate(eval_step, dataset, global_batch=4, iterator_release=release) for _ in range(2)]
    release.join()
    assert [(r.count, r.top1, r.loss) for r in results] == [(10, 0.5, 1.0)] * 2
    assert destroyed_on == ["input-iterator-release"] * 2


def _hand_metrics(model, info, image_size, preprocess):
    """top-1/top-5/loss from the model's logits over every validation example, in numpy."""
    ds = data.eval_records(info, DataConfig(), image_size=image_size, preprocess=preprocess).batch(64)
    logits, labels = [], []
    for images, labs in ds:
        logits.append(model(images, training=False).numpy().astype(np.float64))
        labels.append(labs.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    order = np.argsort(-logits, axis=1)
    top1 = np.mean(order[:, 0] == labels)
    top5 = np.mean([lab in row[:5] for lab, row in zip(labels, order)])
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -np.mean(logp[np.arange(len(labels)), labels])
    return len(labels), top1, top5, loss


@pytest.fixture(scope="module")
def hand_metrics(tiny_checkpoint):
    """_hand_metrics of the tiny checkpoint's raw and EMA weights, with the preprocessing its run recorded."""
    info = data.open_dataset(DataConfig())
    restored = restore(tiny_checkpoint)
    raw = _hand_metrics(restored.model, info, 32, restored.spec.preprocessing)
    restored.use_ema_weights()
    return {"": raw, "_ema": _hand_metrics(restored.model, info, 32, restored.spec.preprocessing)}


@pytest.mark.slow
def test_evaluate_matches_a_hand_computation_for_raw_and_ema(tiny_checkpoint, run_script, tmp_path, hand_metrics):
    out = tmp_path / "eval.json"
    proc = run_script("evaluate.py", "--ckpt", os.path.join(tiny_checkpoint, "ckpt-3"), "--eval_batch_size", 16,
                      "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in METRICS:
        assert name in proc.stdout
    res = json.loads(out.read_text())
    assert res["weights"] == "both" and res["eval_img_size"] == 32
    assert res["best_weights"] in ("raw", "ema")

    # The run recorded the whole-image eval crop it chose for the demo's small images; evaluation applies it.
    assert RunSpec.load(tiny_checkpoint).preprocessing.eval_fraction(32) == res["eval_crop_fraction"] == 1.0
    for suffix in ("", "_ema"):
        n, top1, top5, loss = hand_metrics[suffix]
        assert n == data.open_dataset(DataConfig()).num_eval_examples == res[f"eval_examples{suffix}"] == 359
        assert res[f"eval_accuracy_top_1{suffix}"] == pytest.approx(top1, abs=1e-9)
        assert res[f"eval_accuracy_top_5{suffix}"] == pytest.approx(top5, abs=1e-9)
        assert res[f"eval_loss{suffix}"] == pytest.approx(loss, rel=1e-4)
        assert res[f"avg_exp_per_second_eval{suffix}"] > 0
        assert res[f"latency_99pct{suffix}"] >= res[f"latency_90pct{suffix}"] >= res[f"latency_50pct{suffix}"] > 0
    best = max(res["eval_accuracy_top_1"], res["eval_accuracy_top_1_ema"])
    assert res["best_eval_accuracy_top_1"] == best
    assert "best:" in results_table(res)


_TWO_REPLICAS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from loops.parallel.distribution import mirrored_engine
from loops.config import EvalConfig
from loops.offline_evaluation import evaluate_checkpoint
engine = mirrored_engine(["/cpu:0", "/cpu:1"])
res = evaluate_checkpoint(EvalConfig(ckpt=sys.argv[1], weights="raw", eval_batch_size=7, output=sys.argv[2]), engine)
print(json.dumps({k: res[k] for k in ("replicas", "eval_examples", "eval_accuracy_top_1", "eval_accuracy_top_5")}))
"""


@pytest.mark.slow
def test_evaluation_on_two_replicas_counts_every_example_once(tiny_checkpoint, tmp_path, hand_metrics):
    # 359 examples in global batches of 14: the last batch is padded, and padding must not count.
    proc = preloaded.run(["-c", _TWO_REPLICAS, tiny_checkpoint, tmp_path / "e.json"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    n, top1, top5, _ = hand_metrics[""]
    assert two["replicas"] == 2
    assert two["eval_examples"] == n == 359
    assert two["eval_accuracy_top_1"] == pytest.approx(top1, abs=1e-9)
    assert two["eval_accuracy_top_5"] == pytest.approx(top5, abs=1e-9)


@pytest.mark.slow
def test_eval_crop_flags_override_the_recorded_ones(tiny_checkpoint, tmp_path):
    cfg = EvalConfig(ckpt=tiny_checkpoint, weights="raw", eval_batch_size=64, output=str(tmp_path / "e.json"),
                     preprocess=data.EvalPreprocessing(crop_padding=32, resize_method="bicubic"))
    res = evaluate_checkpoint(cfg, create_engine())
    assert (res["eval_crop_fraction"], res["resize_method"]) == (0.5, "bicubic")
    restored = restore(tiny_checkpoint, with_ema=False)
    wanted = restored.spec.preprocessing.with_eval_overrides(cfg.preprocess)
    _, top1, _, loss = _hand_metrics(restored.model, data.open_dataset(DataConfig()), 32, wanted)
    assert res["eval_accuracy_top_1"] == pytest.approx(top1, abs=1e-9)
    assert res["eval_loss"] == pytest.approx(loss, rel=1e-4)


def test_ckpt_pointing_nowhere_is_a_clear_error(run_script, tmp_path):
    missing = tmp_path / "nothing-here"
    proc = run_script("evaluate.py", "--ckpt", missing)
    assert proc.returncode == 1
    assert f"--ckpt {missing}" in proc.stderr and "not found" in proc.stderr


def test_model_dir_without_checkpoint_is_a_clear_error(tmp_path):
    """evaluate.py prints this error as the one above (exit code 1); here from evaluate_checkpoint itself."""
    with pytest.raises(FileNotFoundError) as caught:
        evaluate_checkpoint(EvalConfig(ckpt=str(tmp_path)), create_engine())
    assert f"no checkpoint in {tmp_path}" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_ckpt_flag_is_a_usage_error(run_script):
    proc = run_script("evaluate.py")
    assert proc.returncode != 0 and "--ckpt is required" in proc.stderr
