"""Small images learn: a run on 28 px images, with the preprocessing decided from their size, reaches high
accuracy, where the reference's ImageNet crops (a 5-100% random crop, an eval crop of half the side at
32 px) leave the network near chance."""

import numpy as np
import pytest

import input as I
from input import testdata
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
    """Grey PNGs in TFRecord shards (labels 1-based, as ImageNet's): an image folder would learn the same, but
    tf.data opens one file per example there, which costs more than the training itself."""
    root = str(tmp_path_factory.mktemp("corner_squares"))
    rng = np.random.RandomState(0)
    for split, per_class, num_shards in (("train", 100, 4), ("validation", 40, 1)):
        records = [(testdata.encode(_image(rng, label), "png"), label + 1)
                   for label in range(len(CLASSES)) for _ in range(per_class)]
        testdata.write_shards(root, split, [records[k::num_shards] for k in range(num_shards)])
    return root


def _accuracy(folder, preprocessing) -> float:
    cfg = I.DataConfig(data_dir=folder)
    return validation_accuracy(I.open_dataset(cfg), cfg, preprocess=preprocessing, batch_size=32, steps=30)


def test_small_images_learn_with_the_decided_preprocessing_and_not_with_imagenet_crops(corner_squares):
    info = I.open_dataset(I.DataConfig(data_dir=corner_squares))
    decided, notice = I.Preprocessing().for_images(I.median_short_side(info))
    assert "small" in notice and decided.random_flip  # flips stay: they do not change these classes
    decided_accuracy = _accuracy(corner_squares, decided)
    reference_accuracy = _accuracy(corner_squares, REFERENCE)
    print(f"decided {decided_accuracy:.3f}, reference crops {reference_accuracy:.3f} (chance 0.333)")
    assert decided_accuracy > 0.9
    assert reference_accuracy < 0.6
