"""Configuration and description objects shared by every part of the input package."""
from __future__ import annotations

import dataclasses
import os

from flags.settings import NON_NEGATIVE, Settings, require, setting, within

SOURCES = ("auto", "tfrecord", "tfds", "folder")
RESIZE_METHODS = ("bilinear", "bicubic")
AUGMENTERS = ("autoaugment", "randaugment")

# Crop parameters of the reference recipe (Inception-style random crop).
DEFAULT_CROP_AREA = (0.05, 1.0)
DEFAULT_CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Settings):
    data_dir: str | None = setting(
        None, "Dataset directory: TFRecord shards (train-*, validation-*), a TFDS data_dir, or an image folder "
        "(train/<class>/*, validation/<class>/*). Empty: the embedded demo dataset (scikit-learn digits).")
    source: str = setting("auto", "What --data_dir holds; auto detects it.", flag="data_source", choices=SOURCES)
    dataset: str | None = setting(None, "TFDS dataset name (e.g. imagenet2012) when --data_source=tfds.")
    manual_dir: str | None = setting(None, "TFDS manual_dir with the ImageNet tars, for offline preparation.")
    labels_zero_based: bool = setting(False, "TFRecord labels are already 0-based (ImageNet's are 1-based).")
    skip_corrupt: bool = setting(False, "Skip and count undecodable images instead of stopping.")
    resize_method: str | None = setting(None, "Image resize interpolation (default: bilinear when training; the "
                                              "run's own when evaluating a checkpoint).", choices=RESIZE_METHODS)
    demo_cache_dir: str | None = setting(None, "Where the demo dataset's TFRecords are cached.")
    # Only needed for TFRecord shards that carry neither a labels file nor a count file: without it the
    # class count is found by scanning the validation labels once.
    num_classes: int | None = None

    @property
    def interpolation(self) -> str:
        """The resize method the pipeline uses: --resize_method, else bilinear."""
        return self.resize_method or "bilinear"

    def validate(self):
        require(not (self.source == "tfds" and not self.dataset and self.data_dir is None), "data_source",
                self.source, "needs --dataset (a TFDS name such as imagenet2012) or --data_dir")
        require(self.num_classes is None or self.num_classes >= 1, "num_classes", self.num_classes,
                "must be positive")
        require(self.manual_dir is None or os.path.isdir(self.manual_dir), "manual_dir", self.manual_dir,
                "is not a directory")
        require(not (self.data_dir is None and self.source in ("tfrecord", "folder")), "data_source", self.source,
                "needs --data_dir")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentConfig(Settings):
    augmenter_name: str | None = setting(None, "Image augmentation policy.", choices=AUGMENTERS)
    raug_num_layers: int = setting(2, "RandAugment: operations per image.", rule=NON_NEGATIVE)
    raug_magnitude: float = setting(10.0, "RandAugment magnitude (of the last stage).", rule=within(0, 30))
    mixup_alpha: float = setting(0.0, "Mixup alpha (of the last stage); 0 disables.", rule=NON_NEGATIVE)
    cutmix_alpha: float = setting(0.0, "CutMix alpha (of the last stage); 0 disables.", rule=NON_NEGATIVE)
    defer_img_mixing: bool = setting(False, "Mix images in the train step instead of the input pipeline.")

    def validate(self):
        require(not self.defer_img_mixing or self.mixing, "defer_img_mixing", self.defer_img_mixing,
                "needs --mixup_alpha or --cutmix_alpha > 0")

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclasses.dataclass(frozen=True)
class Shard:
    """One readable unit: a TFRecord file, or (folder source) one image file."""
    path: str
    num_records: int
    label: int = -1  # folder source only: the 0-based class of the image file


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    source: str
    description: str
    num_classes: int
    class_names: tuple[str, ...]
    num_train_examples: int
    num_eval_examples: int
    train_shards: tuple[Shard, ...] = ()
    eval_shards: tuple[Shard, ...] = ()
    # How records are parsed: feature keys and the amount subtracted from stored labels.
    image_key: str = "image/encoded"
    label_key: str = "image/class/label"
    label_offset: int = 1
    is_demo: bool = False
    # The demo's 32 px digits do not survive a 5% crop or a mirror image, so it trains with a milder crop.
    crop_area: tuple[float, float] = DEFAULT_CROP_AREA
    random_flip: bool = True
    # Eval centre crop as a fraction of the shorter side; None: the reference size / (size + 32). That formula
    # keeps 87.5% at 224 px but only half the image at 32 px, which cuts the demo's digits apart.
    eval_crop_fraction: float | None = None

    @property
    def record_format(self) -> str:
        return "files" if self.source == "folder" else "tfrecord"
