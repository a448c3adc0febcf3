"""The preprocessing settings: flags with the reference's names, decided from the image sizes where not given,
recorded in run_spec.json (old files still load), and the demo's flag file; --warmup_epochs cut to the run."""
import json
import os

import pytest

import input as I
from flags import cli
from input import testdata
from input.config import DEFAULT_CROP_AREA, REFERENCE
from loops.config import TrainConfig
from tests.test_settings import _parsed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flags_set_every_preprocessing_setting():
    cfg = cli.build(TrainConfig, _parsed(
        TrainConfig, "--norandom_crop", "--crop_area_range", "0.3,0.9", "--crop_aspect_range", "0.5,2",
        "--norandom_flip", "--crop_padding", "0", "--resize_method", "bicubic"))
    assert cfg.preprocess == I.Preprocessing(random_crop=False, crop_area_range=(0.3, 0.9),
                                             crop_aspect_range=(0.5, 2.0), random_flip=False, crop_padding=0,
                                             resize_method="bicubic")
    assert cfg.preprocess.decided


@pytest.mark.parametrize("argv,message", [
    (["--crop_area_range", "0.5"], "--crop_area_range=(0.5,): must be two numbers lo,hi with 0.0 < lo <= hi <= 1.0"),
    (["--crop_area_range", "0.9,0.2"], "--crop_area_range=(0.9, 0.2): must be two numbers"),
    (["--crop_aspect_range", "0,1"], "--crop_aspect_range=(0.0, 1.0): must be two numbers"),
    (["--eval_crop_fraction", "1.5"], "--eval_crop_fraction=1.5: must be in (0, 1]"),
    (["--eval_crop_fraction", "0.9", "--crop_padding", "8"], "--eval_crop_fraction=0.9: contradicts --crop_padding=8"),
    (["--crop_padding", "-1"], "--crop_padding=-1: must be >= 0"),
])
def test_bad_preprocessing_values_are_refused_naming_the_flag(argv, message):
    with pytest.raises(ValueError) as e:
        cli.build(TrainConfig, _parsed(TrainConfig, *argv))
    assert message in str(e.value)


def test_small_images_train_and_evaluate_whole_and_the_notice_names_the_flags():
    decided, notice = I.Preprocessing().for_images(28)
    assert (decided.random_crop, decided.crop_padding, decided.random_flip) == (False, 0, True)
    assert decided.eval_fraction(32) == 1.0 and decided.decided
    assert "small (median shorter side 28 px" in notice
    assert "--norandom_crop, --crop_area_range=0.5,1, --crop_padding=0" in notice


def test_photos_keep_the_reference_values():
    decided, notice = I.Preprocessing().for_images(375)
    assert decided == REFERENCE
    assert decided.eval_fraction(224) == 224 / 256 and "photo-sized" in notice


def test_given_settings_win_over_the_decided_ones():
    decided, notice = I.Preprocessing(random_crop=True, eval_crop_fraction=0.875).for_images(28)
    assert (decided.random_crop, decided.crop_padding, decided.eval_crop_fraction) == (True, None, 0.875)
    assert decided.crop_area_range == (0.5, 1.0)  # the small-image range, as --crop_area_range was not given
    assert "random_crop" not in notice and "crop_padding" not in notice
    # The boundary: a 5% crop of a 144 px side is 32.2 px across, of a 143 px side 31.98.
    assert I.Preprocessing().for_images(144)[0].crop_area_range == DEFAULT_CROP_AREA
    assert I.Preprocessing().for_images(143)[0].random_crop is False


def test_median_short_side_of_folders_and_shards(tmp_path):
    folder = testdata.make_image_folder(str(tmp_path / "f"), num_classes=2, train_per_class=3, size=(30, 50))
    assert I.median_short_side(I.open_dataset(I.DataConfig(data_dir=folder))) == 30
    sizes = [(20, 90), (64, 40), (33, 33)]
    testdata.write_shards(str(tmp_path / "t"), "train", [[(testdata.encode(testdata.image_array(k, h, w)), 1)]
                                                         for k, (h, w) in enumerate(sizes)])
    info = I.open_dataset(I.DataConfig(data_dir=str(tmp_path / "t"), num_classes=1))
    assert I.median_short_side(info) == 33


def test_run_spec_round_trips_the_preprocessing(tmp_path):
    from loops.checkpoints import RunSpec

    prep = I.Preprocessing(random_crop=True, crop_area_range=(0.3, 0.9), crop_aspect_range=(0.5, 2.0),
                           random_flip=False, eval_crop_fraction=0.8, resize_method="bicubic")
    RunSpec("b0", 3, {}, ("a", "b", "c"), 40, preprocessing=prep).save(str(tmp_path))
    raw = json.loads((tmp_path / "run_spec.json").read_text())
    assert raw["preprocessing"]["crop_area_range"] == [0.3, 0.9] and raw["preprocessing"]["random_flip"] is False
    assert RunSpec.load(str(tmp_path)).preprocessing == prep


@pytest.mark.parametrize("old,expected", [
    ({"resize_method": "bicubic", "eval_crop_fraction": None},
     {"random_crop": True, "crop_area_range": (0.05, 1.0), "random_flip": True, "crop_padding": 32,
      "eval_crop_fraction": None, "resize_method": "bicubic"}),
    ({"resize_method": "bilinear", "eval_crop_fraction": 0.875},  # only the demo recorded a fraction
     {"random_crop": True, "crop_area_range": (0.5, 1.0), "random_flip": False, "crop_padding": None,
      "eval_crop_fraction": 0.875, "resize_method": "bilinear"}),
])
def test_run_spec_written_before_the_settings_loads_with_what_it_meant(tmp_path, old, expected):
    from loops.checkpoints import RunSpec

    (tmp_path / "run_spec.json").write_text(json.dumps({
        "variant": "b0", "num_classes": 10, "model_overrides": {}, "class_names": list("0123456789"),
        "eval_img_size": 32, **old}))
    prep = RunSpec.load(str(tmp_path)).preprocessing
    assert {k: getattr(prep, k) for k in expected} == expected


def test_demo_flag_file_is_the_readme_command():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "train.py --flagfile flags/demo.cfg --model_dir runs/demo" in readme
    values = _parsed(TrainConfig, "--flagfile", os.path.join(REPO, "flags", "demo.cfg"))
    cfg = cli.build(TrainConfig, values)
    assert (cfg.train_img_size, cfg.max_epochs, cfg.warmup_epochs) == (32, 8, 1.0)
    assert cfg.preprocess == I.Preprocessing(random_crop=True, crop_area_range=(0.5, 1.0), random_flip=False,
                                             eval_crop_fraction=0.875)
    assert cfg.model_overrides == {"bn_momentum": 0.9, "classifier_init": "fan_in"} and cfg.data.data_dir is None


def test_warmup_longer_than_the_run_is_cut_to_it_with_a_notice(capsys):
    cfg = TrainConfig(max_epochs=2)  # the default --warmup_epochs is 5
    assert cfg.warmup_epochs == 2.0
    assert "note: --warmup_epochs=5.0: is longer than --max_epochs=2; warming up over all 2 epochs" in \
        capsys.readouterr().err
    assert TrainConfig(max_epochs=8).warmup_epochs == 5.0 and capsys.readouterr().err == ""
