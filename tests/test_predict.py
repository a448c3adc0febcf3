"""predict.py: file order, a corrupt file and a non-image named while the rest are predicted, eval
preprocessing (centre crop), class names, CSV/JSON-lines output, clear errors."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import input as data
from input import testdata
from loops.serving.config import PredictConfig
from loops.serving.prediction import predict
from loops.restore import display_class_names, imagenet_class_names, restore
from loops.checkpoints import RunSpec


def _expected_probs(restored, path):
    """The in-process restored model on exactly the evaluation preprocessing of the file."""
    spec = restored.spec
    x = data.preprocess_for_eval(tf.io.read_file(path), spec.eval_img_size, spec.preprocessing)
    return tf.nn.softmax(restored.model(x[None], training=False)).numpy()[0]


@pytest.mark.slow
def test_folder_with_corrupt_file_and_png_predicts_the_rest_in_order(tiny_checkpoint, run_script, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_photo.jpg").write_bytes(testdata.encode(testdata.image_array(1, 50, 70), "jpg"))
    (images / "b_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    (images / "c_wide.png").write_bytes(testdata.encode(testdata.image_array(2, 30, 90), "png"))
    (images / "d_notes.txt").write_text("not an image")
    (images / "e_last.jpeg").write_bytes(testdata.encode(testdata.image_array(3, 64, 48), "jpg"))
    out = tmp_path / "pred.jsonl"
    proc = run_script("predict.py", "--ckpt", tiny_checkpoint, "--image_dir", images, "--predict_batch_size", 2,
                      "--top_k", 3, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.path.basename(r["file"]) for r in rows] == ["a_photo.jpg", "b_corrupt.jpg", "c_wide.png",
                                                           "d_notes.txt", "e_last.jpeg"]
    assert [("error" in r) for r in rows] == [False, True, False, True, False]
    for bad in ("b_corrupt.jpg", "d_notes.txt"):
        assert bad in proc.stderr
    names = [str(i) for i in range(10)]  # the demo set's own label names
    restored = restore(tiny_checkpoint)
    restored.use_ema_weights()
    for r in (rows[0], rows[2], rows[4]):
        expected = _expected_probs(restored, r["file"])
        assert len(r["top_k"]) == 3
        assert [t["class_id"] for t in r["top_k"]] == list(np.argsort(-expected, kind="stable")[:3])
        for t in r["top_k"]:
            assert t["class_name"] == names[t["class_id"]]
            assert t["probability"] == pytest.approx(float(expected[t["class_id"]]), rel=1e-4, abs=1e-6)
    assert "img/s" in proc.stdout and "p99" in proc.stdout and "3 images (2 failed)" in proc.stdout


@pytest.mark.slow
def test_single_image_to_csv_with_raw_weights(tiny_checkpoint, tmp_path):
    img = tmp_path / "one.png"
    img.write_bytes(testdata.encode(testdata.image_array(5, 40, 40), "png"))
    out = tmp_path / "p.csv"
    result = predict(PredictConfig(ckpt=tiny_checkpoint, image=str(img), top_k=20, weights="raw", output=str(out)))
    assert result.weights == "raw" and result.metrics["images"] == 1
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in table] == list(range(1, 11))  # top_k capped at the 10 classes
    probs = [float(r["probability"]) for r in table]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)


def test_imagenet_names_for_a_1000_class_model_and_dataset_names_otherwise():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0].startswith("tench") and names[999].startswith("toilet tissue")
    anon = RunSpec("b0", 1000, {}, tuple(str(i) for i in range(1000)), 224)
    assert display_class_names(anon) == names
    own = RunSpec("b0", 3, {}, ("cat", "dog", "fox"), 224)
    assert display_class_names(own) == ("cat", "dog", "fox")


def test_image_dir_without_files_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"--image_dir {empty} holds no files"):
        predict(PredictConfig(ckpt="unused", image_dir=str(empty)))
    with pytest.raises(FileNotFoundError, match="--image .*missing.png does not exist"):
        predict(PredictConfig(ckpt="unused", image=str(tmp_path / "missing.png")))


def test_image_and_image_dir_are_exclusive(run_script, tmp_path):
    proc = run_script("predict.py", "--ckpt", tmp_path, "--image_dir", tmp_path, "--image", tmp_path / "x.jpg")
    assert proc.returncode != 0 and "exactly one of --image_dir and --image" in proc.stderr


@pytest.mark.slow
def test_default_writes_no_file_and_keeps_tensorflow_logs_off_the_terminal(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(testdata.encode(testdata.image_array(4, 40, 40), "png"))
    (images / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a user's shell
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, "predict.py"), "--ckpt", tiny_checkpoint,
                           "--image_dir", images], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(tmp_path) == ["images"]  # nothing written where it was run from
    assert "Predictions not written to a file (pass --output" in proc.stdout
    assert f"{images / 'a.png'}: " in proc.stdout
    # The one line that names the corrupt file is all the user sees on stderr: no TensorFlow C++ log lines.
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"predict.py: could not read {images / 'b.jpg'}: "), lines
