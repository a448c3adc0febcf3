"""How large the training images are: the median shorter side of a sample, read from image headers only.

Preprocessing that suits ImageNet's photos destroys thumbnails (input.config.Preprocessing.for_images), so a run
whose preprocessing settings are not all given looks at its images first. The sample is the first records of
a few shards (the converter and ImageNet shuffle images across shards, so they are a fair sample) or, for an
image folder, evenly spaced files. PIL reads the sizes from the headers; no image is decoded.
"""
from __future__ import annotations

import io
import statistics

from PIL import Image

from input.config import DatasetInfo

SAMPLE = 256  # images looked at; the median of 256 is stable to a few percent
MAX_SHARDS = 8  # TFRecord shards opened for the sample


def _short_side(source, where: str) -> int:
    """source: a path or a file object; PIL reads only the header."""
    try:
        with Image.open(source) as im:
            return min(im.size)
    except Exception as e:  # PIL raises many exception types for bad files
        raise ValueError(f"cannot read the image size of {where}: {e}") from None


def _record_sides(info: DatasetInfo, shards, sample: int) -> list[int]:
    """Shorter sides of up to `sample` records from the first MAX_SHARDS shards, an equal share of each."""
    import tensorflow as tf

    paths = [s.path for s in shards[:MAX_SHARDS]]
    spec = {info.image_key: tf.io.FixedLenFeature([], tf.string)}
    sides = []
    for path in paths:
        records = tf.data.TFRecordDataset(path).take(-(-sample // len(paths)))
        image_bytes = tf.autograph.experimental.do_not_convert(
            lambda r: tf.io.parse_single_example(r, spec)[info.image_key])
        for k, record in enumerate(records.map(image_bytes)):
            sides.append(_short_side(io.BytesIO(record.numpy()), f"record {k} of {path}"))
    return sides


def median_short_side(info: DatasetInfo, sample: int = SAMPLE) -> float:
    """The median shorter side, in pixels, of up to `sample` training images (of the evaluation images when
    there are no training images)."""
    shards = info.train_shards or info.eval_shards
    if info.record_format == "files":
        sides = [_short_side(s.path, s.path) for s in shards[::max(1, len(shards) // sample)][:sample]]
    else:
        sides = _record_sides(info, shards, sample) if shards else []
    if not sides:
        raise ValueError(f"no images in {info.description} to measure")
    return float(statistics.median(sides))
