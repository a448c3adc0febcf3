"""Small images learn: a run on 28 px images, with the preprocessing decided from their size, reaches high
accuracy, where the reference's ImageNet crops (a 5-100% random crop, an eval crop of half the side at
32 px) leave the network near chance."""
import os

import numpy as np
import pytest
from PIL import Image

import input as I
from input.config import REFERENCE
from tests.small_cnn import validation_accuracy

CLASSES = ("top", "bottom", "top_and_bottom")  # where the squares sit; left or right at random (flips keep it)


def _image(rng, label: int) -> np.ndarray:
    img = rng.randint(0, 40, (28, 28)).astype(np.uint8)
    # 6 px squares in the corner bands (rows 0-6, 21-27): the reference's eval crop at 32 px keeps the central
    # 14 x 14 px (rows and columns 7-20) and so none of them.
    rows = {"top": [0], "bottom": [21], "top_and_bottom": [0, 21]}[CLASSES[label]]
    for row in rows:
        col = 0 if rng.rand() < 0.5 else 21
        dy, dx = rng.randint(0, 2, 2)
        img[row + dy:row + dy + 6, col + dx:col + dx + 6] = 230
    return img


@pytest.fixture(scope="module")
def corner_squares(tmp_path_factory):
    root = tmp_path_factory.mktemp("corner_squares")
    rng = np.random.RandomState(0)
    for split, per_class in (("train", 100), ("validation", 40)):
        for label, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for k in range(per_class):
                Image.fromarray(_image(rng, label), mode="L").save(root / split / name / f"{k:03d}.png")
    return str(root)


def _accuracy(folder, preprocessing) -> float:
    cfg = I.DataConfig(data_dir=folder)
    return validation_accuracy(I.open_dataset(cfg), cfg, preprocess=preprocessing, batch_size=32, steps=60)


def test_small_images_learn_with_the_decided_preprocessing_and_not_with_imagenet_crops(corner_squares):
    info = I.open_dataset(I.DataConfig(data_dir=corner_squares))
    decided, notice = I.Preprocessing().for_images(I.median_short_side(info))
    assert "small" in notice and decided.random_flip  # flips stay: they do not change these classes
    decided_accuracy = _accuracy(corner_squares, decided)
    reference_accuracy = _accuracy(corner_squares, REFERENCE)
    print(f"decided {decided_accuracy:.3f}, reference crops {reference_accuracy:.3f} (chance 0.333)")
    assert decided_accuracy > 0.9
    assert reference_accuracy < 0.6
