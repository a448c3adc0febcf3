"""export.py writes a SavedModel, ONNX and TFLite (fp32, fp16, int8) from one checkpoint; real clients of each
format (saved_model_cli, an ONNX Runtime session, the LiteRT interpreter) classify real images (the demo's
digit JPEGs) as predict.py's TensorFlow path does; bad input fails with one line and leaves nothing behind.

One export per module (the `exported` fixture); the tests that need the optional runtimes skip without
requirements-export.txt unless EFFICIENTNET_REQUIRE_EXPORT=1."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import preloaded
from flags import cli
from loops.serving.config import PredictConfig
from loops.serving.prediction import predict

# int8 of the 3-step tiny checkpoint (about 13% top-1 on the demo digits): its top-1 is often decided by small
# margins, so this bound is loose; the trained model's figures are in docs/deployment.md.
INT8_MIN_AGREEMENT = 0.5
DIGITS = 24


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """JPEG files of the demo's validation digits, as a user would have them on disk."""
    from input.demo import _write_image_folder

    root = tmp_path_factory.mktemp("digits")
    _write_image_folder(str(root))
    files = sorted(str(p) for p in (root / "validation").rglob("*.jpg"))
    return files[::max(1, len(files) // DIGITS)][:DIGITS]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, export_runtimes, run_script, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "b0"
    proc = run_script("export.py", "--ckpt", tiny_checkpoint, "--output", out, "--format", "savedmodel,onnx",
                      "--format", "tflite", "--tflite_precisions", "fp32,fp16,int8", "--calibration_steps", 16,
                      "--check_images", 32, "--min_quantized_agreement", INT8_MIN_AGREEMENT, "--eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def tf_top1(tiny_checkpoint, digit_files, tmp_path_factory):
    """predict.py's TensorFlow path on the digit files, in process (test_predict.py runs its command line):
    (folder, top-1 class id per file)."""
    folder = tmp_path_factory.mktemp("digit_links")
    for k, f in enumerate(digit_files):
        os.symlink(f, folder / f"{k:03d}.jpg")
    result = predict(PredictConfig(ckpt=tiny_checkpoint, backend="tf", image_dir=str(folder), batch_size=8))
    assert not result.errors and result.metrics["images"] == len(digit_files)
    return folder, np.array([r["top_k"][0]["class_id"] for r in result.rows])


def _preprocessed(folder, info):
    """The documented input of model.onnx and the .tflite files: evaluation crop and resize, float32 pixels."""
    import tensorflow as tf

    import input as data

    preprocessing = data.Preprocessing.from_json(info["preprocessing"])
    return np.stack([data.preprocess_for_eval(tf.io.read_file(str(f)), info["image_size"], preprocessing).numpy()
                     for f in sorted(folder.iterdir())])


def _info(out):
    return json.loads((out / "export_info.json").read_text())


@pytest.mark.slow
def test_export_writes_every_format_and_reports_its_self_check_and_eval(exported):
    out, proc = exported
    info = _info(out)
    assert sorted(os.listdir(out)) == ["assets", "export_info.json", "fingerprint.pb", "model.onnx",
                                       "model_fp16.tflite", "model_fp32.tflite", "model_int8.tflite",
                                       "saved_model.pb", "variables"]
    assert not [p for p in os.listdir(out.parent) if p.startswith(".")]  # no work directory left behind
    assert set(info["artifacts"]) == {"savedmodel", "onnx", "tflite_fp32", "tflite_fp16", "tflite_int8"}
    for name, artifact in info["artifacts"].items():
        check = artifact["check"]
        assert check["passed"] and check["images"] == 32, (name, check)
        assert f"self-check {name} ({artifact['path']}" in proc.stdout
        assert 0.0 <= artifact["eval_top1"] <= 1.0
    for name in ("savedmodel", "onnx", "tflite_fp32"):
        assert info["artifacts"][name]["check"]["max_probability_difference"] <= 1e-4
        assert info["artifacts"][name]["check"]["top1_agreement"] == 1.0
    assert info["artifacts"]["tflite_int8"]["check"]["top1_agreement"] >= INT8_MIN_AGREEMENT
    assert info["eval"]["images"] == 359  # the demo's validation split
    assert info["artifacts"]["onnx"]["eval_top1"] == info["eval"]["unexported model"]
    assert "eval top-1 tflite_int8:" in proc.stdout


@pytest.mark.slow
def test_saved_model_cli_classifies_like_predict(exported, tf_top1, tmp_path):
    import tensorflow as tf

    out, _ = exported
    folder, expected = tf_top1
    pixels = np.stack([tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3).numpy()
                       for f in sorted(folder.iterdir())])  # the demo's digits are all 32 x 32
    np.save(tmp_path / "images.npy", pixels)
    cli_path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    # The console script pip wrote, run as a script (it is Python), as its shebang would run it.
    proc = preloaded.run([cli_path, "run", "--dir", out, "--tag_set", "serve", "--signature_def", "serving_uint8",
                          "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", tmp_path / "outputs"],
                         timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = np.load(tmp_path / "outputs" / "top_k_class_ids.npy")[:, 0]
    np.testing.assert_array_equal(top, expected)


@pytest.mark.slow
def test_onnxruntime_session_classifies_like_predict(exported, tf_top1):
    import onnxruntime as ort

    out, _ = exported
    folder, expected = tf_top1
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("images", "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    probs = session.run(None, {"images": _preprocessed(folder, _info(out))})[0]
    np.testing.assert_array_equal(np.argmax(probs, 1), expected)
    assert json.loads(session.get_modelmeta().custom_metadata_map["efficientnet_export_info"])["image_size"] == 32


def _litert(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape, strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.slow
def test_litert_interpreter_classifies_like_predict_and_int8_mostly_agrees(exported, tf_top1):
    out, _ = exported
    folder, expected = tf_top1
    images = _preprocessed(folder, _info(out))
    np.testing.assert_array_equal(np.argmax(_litert(out / "model_fp32.tflite", images), 1), expected)
    int8 = np.argmax(_litert(out / "model_int8.tflite", images), 1)
    agreement = float((int8 == expected).mean())
    print(f"int8 top-1 agreement with predict.py's TensorFlow path: {agreement:.2%} of {len(expected)} digits")
    assert agreement >= INT8_MIN_AGREEMENT


@pytest.mark.slow
def test_predict_runs_the_export_in_each_backend(exported, tf_top1, run_script, tmp_path):
    """predict.py --model on the export directory as a command (ONNX Runtime, the default for a directory
    holding model.onnx); the TFLite file and the SavedModel through the same predict() in process, since only
    the runtime they open differs."""
    out, _ = exported
    folder, expected = tf_top1
    target = tmp_path / "onnx.jsonl"
    proc = run_script("predict.py", "--model", out, "--image_dir", folder, "--output", target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ONNX Runtime" in proc.stdout
    np.testing.assert_array_equal([json.loads(line)["top_k"][0]["class_id"]
                                   for line in target.read_text().splitlines()], expected)
    for model, backend, runtime in ((out / "model_fp32.tflite", None, "LiteRT"), (out, "tf", "TensorFlow SavedModel")):
        result = predict(PredictConfig(model=str(model), backend=backend, image_dir=str(folder)))
        assert result.runtime.startswith(runtime), result.runtime
        np.testing.assert_array_equal([r["top_k"][0]["class_id"] for r in result.rows], expected)


@pytest.mark.slow
def test_failed_self_check_exits_non_zero_and_leaves_nothing(tiny_checkpoint, export_runtimes, run_script, tmp_path):
    out = tmp_path / "exports" / "b0"
    # ONNX Runtime's convolutions round differently from TensorFlow's: no artifact is bit-exact.
    proc = run_script("export.py", "--ckpt", tiny_checkpoint, "--output", out, "--format", "onnx",
                      "--max_probability_difference", 1e-12, "--check_images", 8)
    assert proc.returncode == 1
    assert "export.py: error: onnx failed the self-check" in proc.stderr and "Traceback" not in proc.stderr
    assert "self-check onnx (model.onnx" in proc.stdout and "FAILED" in proc.stdout
    assert os.listdir(tmp_path / "exports") == []


def test_bad_checkpoint_and_format_are_one_line_errors(run_script, tmp_path):
    proc = run_script("export.py", "--ckpt", tmp_path / "missing", "--output", tmp_path / "out")
    assert proc.returncode == 1 and f"export.py: error: --ckpt {tmp_path / 'missing'}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    proc = run_script("export.py", "--ckpt", tmp_path, "--output", tmp_path / "out", "--format", "savedmodel,pdf")
    assert proc.returncode == 1 and "--format=('savedmodel', 'pdf'): each must be one of savedmodel, onnx, tflite" \
        in proc.stderr


def test_missing_optional_dependency_names_the_requirements_file(run_script, tmp_path):
    fake = tmp_path / "fake" / "tf2onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'tf2onnx'\")\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "export.py", "--ckpt", tmp_path, "--output", tmp_path / "out",
                           "--format", "onnx"], cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert ("export.py: error: --format onnx needs the optional package tf2onnx" in proc.stderr
            and "pip install -r requirements-export.txt" in proc.stderr)
    assert not (tmp_path / "out").exists()


def test_format_flag_takes_comma_lists_and_repetitions():
    from absl import flags

    from loops.serving.config import ExportConfig

    values = flags.FlagValues()
    cli.define(ExportConfig, values)
    values(["export.py", "--ckpt", "c", "--output", "o", "--format", "savedmodel", "--format", "onnx,tflite"])
    assert cli.build(ExportConfig, values).formats == ("savedmodel", "onnx", "tflite")
