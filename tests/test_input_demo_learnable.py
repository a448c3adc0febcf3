"""The demo dataset, read through the real pipeline with the demo's flag-file preprocessing, is learnable:
labels match images and the crop does not destroy the digits."""
import os

import pytest

import input as I
from flags import cli
from loops.config import TrainConfig
from tests.small_cnn import validation_accuracy
from tests.test_settings import _parsed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_small_cnn_learns_demo_digits(tmp_path):
    demo = cli.build(TrainConfig, _parsed(TrainConfig, "--flagfile", os.path.join(REPO, "flags", "demo.cfg")))
    cfg = I.DataConfig(demo_cache_dir=str(tmp_path))
    info = I.open_dataset(cfg)
    accuracy = validation_accuracy(info, cfg, preprocess=demo.preprocess, batch_size=64, steps=200)
    print(f"demo accuracy {accuracy:.3f}")
    assert accuracy > 0.9  # chance is 0.1
