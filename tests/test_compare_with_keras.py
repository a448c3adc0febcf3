"""The side-by-side benchmark against Keras Applications runs and prints a well-formed ratio table."""

import re

import pytest

from conftest import TINY_MPARAMS, ratio_fits_its_rounded_figures


@pytest.mark.long
@pytest.mark.slow
def test_comparison_table_on_the_tiny_network(run_script, export_runtimes):
    # Both sides the tests' tiny network (Keras Applications' builder at the same width and depth).
    out = run_script("scripts/compare_with_keras.py", "--image_size", 32, "--batch_size", 4, "--steps", 2,
                     "--warmup_steps", 1, "--latency_calls", 5, "--throughput_batch_size", 4,
                     "--throughput_calls", 2, "--mparams", TINY_MPARAMS, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"EfficientNet-B0 with --mparams {TINY_MPARAMS} at 32 px" in out.stdout
    rows = re.findall(r"^\| (training img/s|batch-\d+ (?:latency p\d\d ms|img/s), [^|]*?)"
                      r"(?: \(higher is better\))? \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out.stdout, re.M)
    assert [r[0] for r in rows] == [
        "training img/s",
        "batch-1 latency p50 ms, predict.py path", "batch-1 latency p99 ms, predict.py path",
        "batch-1 latency p50 ms, exported SavedModel, serving_pixels",
        "batch-1 latency p99 ms, exported SavedModel, serving_pixels",
        "batch-1 latency p50 ms, exported SavedModel, serving_uint8 (+ crop, resize)",
        "batch-1 latency p99 ms, exported SavedModel, serving_uint8 (+ crop, resize)",
        "batch-1 latency p50 ms, our unoptimised model (reference)",
        "batch-1 latency p99 ms, our unoptimised model (reference)",
        "batch-1 latency p50 ms, ONNX Runtime: our model.onnx vs Keras's",
        "batch-1 latency p99 ms, ONNX Runtime: our model.onnx vs Keras's",
        "batch-4 img/s, ONNX Runtime: our model.onnx vs Keras's",
        "batch-1 latency p50 ms, predict.py path (TensorFlow) vs Keras's model in ONNX Runtime",
        "batch-1 latency p99 ms, predict.py path (TensorFlow) vs Keras's model in ONNX Runtime",
        "batch-4 img/s, predict.py path (TensorFlow) vs Keras's model in ONNX Runtime"]
    for _, base, ours, ratio in rows:
        assert float(base) > 0 and float(ours) > 0
        # The ratio is computed before rounding (1.14 printed beside figures whose quotient is 1.12 happened).
        assert ratio_fits_its_rounded_figures(float(ratio), float(ours), float(base), 0.005), (base, ours, ratio)
    max_diff = re.search(r"Largest difference of served and unoptimised probabilities: (\S+)", out.stdout)
    assert max_diff and float(max_diff.group(1)) <= 1e-5
