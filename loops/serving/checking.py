"""What an export is checked with: images from the dataset, the unexported model's probabilities on them, and
each artifact's agreement with it (self-check) or its top-1 over the evaluation set."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

import input as data


def sample_images(info: data.DatasetInfo, data_cfg: data.DataConfig, *, split: str, count: int, image_size: int,
                  preprocess: data.Preprocessing, seed: int = 0) -> np.ndarray:
    """`count` images (fewer if the split is smaller) of the split ("train" or "eval") through the
    evaluation preprocessing, float32 [n, S, S, 3]. Shards are read in a seeded random order: image folders
    and TFDS list their files by class, and the first images would all be of one class."""
    shards = list(info.train_shards if split == "train" else info.eval_shards)
    if not shards:
        raise ValueError(f"no {'training' if split == 'train' else 'evaluation'} images in {info.description} "
                         f"to {'calibrate' if split == 'train' else 'check'} the export with")
    order = np.random.default_rng(seed).permutation(len(shards))
    shuffled = dataclasses.replace(info, eval_shards=tuple(shards[k] for k in order))
    records = data.eval_records(shuffled, data_cfg, image_size=image_size, preprocess=preprocess)
    records = records.take(count).batch(count)
    images = [x.numpy() for x, _ in records]
    return images[0] if images else np.zeros([0, image_size, image_size, 3], np.float32)


def batched(fn, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def model_probabilities(model, images: np.ndarray) -> np.ndarray:
    """The unexported model itself (training graph in inference mode, BatchNorm not folded)."""
    return batched(lambda x: tf.nn.softmax(tf.cast(model(x, training=False), tf.float32), axis=-1).numpy(),
                   images)


@dataclasses.dataclass(frozen=True)
class Agreement:
    images: int
    top1_agreement: float  # share of images where the artifact's top-1 is the model's
    max_probability_difference: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def agreement(probabilities: np.ndarray, reference: np.ndarray) -> Agreement:
    same = np.argmax(probabilities, 1) == np.argmax(reference, 1)
    return Agreement(images=len(reference), top1_agreement=float(same.mean()),
                     max_probability_difference=float(np.abs(probabilities - reference).max()))


def top1_on_eval_set(fn, info: data.DatasetInfo, data_cfg: data.DataConfig, image_size: int,
                     preprocess: data.Preprocessing, batch_size: int = 32) -> tuple[float, int]:
    """(top-1 accuracy, images) of fn (images -> probabilities) over the whole evaluation set."""
    correct = total = 0
    records = data.eval_records(info, data_cfg, image_size=image_size, preprocess=preprocess)
    for images, labels in records.batch(batch_size):
        predicted = np.argmax(fn(images.numpy()), 1)
        correct += int((predicted == labels.numpy()).sum())
        total += len(predicted)
    return correct / max(total, 1), total
