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
def test_small_cnn_learns_demo_digits():
    demo = cli.build(TrainConfig, _parsed(TrainConfig, "--flagfile", os.path.join(REPO, "flags", "demo.cfg")))
    # The demo's own cache, as train.py uses it (built once for every test that needs it; building it is
    # tests/test_input_sources.py's subject). 100 steps of 64 are 4.5 epochs of the 1,438 training digits.
    cfg = I.DataConfig()
    info = I.open_dataset(cfg)
    accuracy = validation_accuracy(info, cfg, preprocess=demo.preprocess, batch_size=64, steps=100)
    print(f"demo accuracy {accuracy:.3f}")
    assert accuracy > 0.9  # chance is 0.1
