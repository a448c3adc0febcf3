"""The benchmark modes of train.py run at tiny sizes and write well-formed tables and JSON."""

import json

import pytest

from conftest import TINY_MPARAMS
from loops.bench.benchmark import COLUMNS, format_tables
from loops.serving import dependencies

# The tests' tiny network: the tables, timings and profile do not depend on the network's size.
TINY = ("--mparams", TINY_MPARAMS)
BACKENDS = ("tf", "onnxruntime", "tflite")


def _check(result, mode, precisions, batch_sizes, size):
    assert result["mode"] == mode and result["steps"] == 3 and result["warmup_steps"] == 1
    rows = [r for r in result["results"] if r["backend"] == "tf"]
    assert [(r["precision"], r["batch_size"]) for r in rows] == [(p, b) for p in precisions for b in batch_sizes]
    for r in rows:
        assert r["resolution"] == f"{size}x{size}"
        assert r["throughput"] > 0 and r["peak_memory_mib"] > 100
        assert r["throughput"] == pytest.approx(1000.0 * r["batch_size"] / r["latency_avg"], rel=1e-6)
        assert r["latency_99pct"] >= r["latency_95pct"] >= r["latency_90pct"] >= r["latency_50pct"] > 0


def _table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]


@pytest.fixture(scope="module")
def inference_benchmark(run_script, tmp_path_factory):
    """One train.py --mode inference_benchmark run at fp32 and amp_bf16, batch sizes 1 and 2, with ONNX Runtime
    and LiteRT beside TensorFlow when requirements-export.txt is installed. -> (process, result JSON)."""
    export_installed = dependencies.installed(dependencies.ONNX_EXPORT + dependencies.ONNX_RUNTIME
                                              + dependencies.TFLITE_RUNTIME)
    backends = BACKENDS if export_installed else ("tf",)
    model_dir = tmp_path_factory.mktemp("inference_benchmark")
    out = model_dir / "inf.json"
    proc = run_script("train.py", "--mode", "inference_benchmark", "--model_dir", model_dir, "--eval_img_size", 32,
                      "--benchmark_batch_sizes", "1,2", "--benchmark_precisions", "fp32,amp_bf16",
                      "--benchmark_backends", ",".join(backends), "--benchmark_steps", 3,
                      "--benchmark_warmup_steps", 1, "--benchmark_output", out, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_inference_benchmark_tables(inference_benchmark):
    proc, result = inference_benchmark
    _check(result, "inference_benchmark", ["fp32", "amp_bf16"], [1, 2], 32)
    assert "Inference performance" in proc.stdout and "FP32" in proc.stdout and "BF16 (AMP)" in proc.stdout
    assert "| " + " | ".join(c[0] for c in COLUMNS) + " |" in proc.stdout
    rows = _table_rows(proc.stdout)
    assert len(rows) == len(result["results"]) and all(len(r.split("|")) == len(COLUMNS) + 2 for r in rows)
    assert format_tables(result) in proc.stdout


@pytest.mark.slow
def test_training_benchmark_table(run_script, tmp_path):
    proc = run_script("train.py", "--mode", "training_benchmark", "--model_dir", tmp_path, "--train_img_size", 32,
                      "--train_batch_size", 2, "--benchmark_precisions", "fp32", "--benchmark_steps", 3,
                      "--benchmark_warmup_steps", 1, "--benchmark_profile_dir", tmp_path / "profile", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "training_benchmark.json").read_text())
    _check(result, "training_benchmark", ["fp32"], [2], 32)
    assert "Training performance" in proc.stdout and len(_table_rows(proc.stdout)) == 1
    # The profile: a trace TensorBoard can open, and the op time charged to every part of the step.
    profile = result["results"][0]["profile"]
    assert list((tmp_path / "profile" / "fp32_batch2").rglob("*.xplane.pb"))
    parts = {name: ms for name, ms, _ in profile["part of the step"]}
    assert {"forward", "backward", "optimizer", "EMA", "L2 penalty", "XLA clusters"} <= set(parts)
    assert all(ms > 0 for ms in parts.values())
    assert parts["backward"] > parts["EMA"]
    kinds = {name for name, _, _ in profile["layer kind (forward + backward)"]}
    assert {"depthwise conv", "batch norm", "squeeze-excite", "conv 1x1 / stem", "activation (swish)"} <= kinds
    assert sum(pct for _, _, pct in profile["op type"]) == pytest.approx(100.0)
    assert "| part of the step | ms per step | % of op time |" in proc.stdout


@pytest.mark.slow
def test_inference_benchmark_times_the_backends_side_by_side(inference_benchmark, export_runtimes):
    proc, result = inference_benchmark
    rows = [r for r in result["results"] if r["precision"] == "fp32"]
    assert [(r["backend"], r["batch_size"]) for r in rows] == [(b, s) for b in BACKENDS for s in (1, 2)]
    for r in rows:
        assert r["resolution"] == "32x32"
        assert r["throughput"] == pytest.approx(1000.0 * r["batch_size"] / r["latency_avg"], rel=1e-6)
        assert r["latency_99pct"] >= r["latency_95pct"] >= r["latency_90pct"] >= r["latency_50pct"] > 0
    # The other runtimes run the float32 network only, whatever --benchmark_precisions says.
    assert {r["backend"] for r in result["results"] if r["precision"] != "fp32"} == {"tf"}
    for title in ("TensorFlow", "ONNX Runtime", "TFLite (LiteRT)"):
        assert f"FP32, {title} (memory" in proc.stdout


def test_bad_benchmark_flags_name_the_flag(run_script, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_script("train.py", "--mode", "training_benchmark", "--model_dir", tmp_path,
                      "--benchmark_profile_dir", blocker / "profile")
    assert proc.returncode != 0 and f"--benchmark_profile_dir={blocker / 'profile'}" in proc.stderr
    assert not (tmp_path / "training_benchmark.json").exists()
    proc = run_script("train.py", "--mode", "inference_benchmark", "--model_dir", tmp_path,
                      "--benchmark_precisions", "fp64")
    assert proc.returncode != 0 and "--benchmark_precisions" in proc.stderr
    proc = run_script("train.py", "--mode", "inference_benchmark", "--model_dir", tmp_path,
                      "--benchmark_batch_sizes", "1,x")
    assert proc.returncode != 0 and "--benchmark_batch_sizes" in proc.stderr
    proc = run_script("train.py", "--mode", "training_benchmark", "--model_dir", tmp_path,
                      "--benchmark_backends", "onnxruntime")
    assert proc.returncode != 0 and "--benchmark_backends='onnxruntime': only applies to --mode inference_benchmark" \
        in proc.stderr


@pytest.mark.parametrize("name,expected", [
    ("efficientnet-b0_1/block2a_dwconv_1/depthwise", ("forward", "depthwise conv")),
    ("gradient_tape/efficientnet-b0_1/block2a_expand_bn_1/FusedBatchNormGradV3", ("backward", "batch norm")),
    ("replica_1/gradient_tape/efficientnet-b0_1/block3b_se_excite_1/Mul", ("backward", "squeeze-excite")),
    ("efficientnet-b0_1/top_conv_1/convolution", ("forward", "conv 1x1 / stem")),
    ("efficientnet-b0_1/block6d_drop_1/Mul", ("forward", "stochastic depth + residual")),
    ("rm_sprop/Mul_559", ("optimizer", "optimizer")),
    ("ema/mul_3", ("EMA", "EMA")),
    ("gradient_tape/l2_penalty/Mul", ("L2 penalty", "L2 penalty")),
    ("CpuExecutable::ExecuteAsyncOnStream", ("XLA clusters", "XLA clusters")),
    ("Cast_25/ReadVariableOp", ("other", "loss, metrics, unattributed gradients")),
])
def test_profile_charges_each_op_to_its_part_and_layer(name, expected):
    from loops.bench.profiling import classify

    assert classify(name) == expected
