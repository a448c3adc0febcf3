"""Configuration and description objects shared by every part of the input package."""
from __future__ import annotations

import dataclasses
import os

SOURCES = ("auto", "tfrecord", "tfds", "folder")
RESIZE_METHODS = ("bilinear", "bicubic")
AUGMENTERS = (None, "autoaugment", "randaugment")

# Crop parameters of the reference recipe (Inception-style random crop).
DEFAULT_CROP_AREA = (0.05, 1.0)
DEFAULT_CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None
    source: str = "auto"
    dataset: str | None = None
    manual_dir: str | None = None
    labels_zero_based: bool = False
    skip_corrupt: bool = False
    resize_method: str = "bilinear"
    demo_cache_dir: str | None = None
    # Only needed for TFRecord shards that carry neither a labels file nor a count file: without it the
    # class count is found by scanning the validation labels once.
    num_classes: int | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"--source must be one of {SOURCES}, got {self.source!r}")
        if self.resize_method not in RESIZE_METHODS:
            raise ValueError(f"--resize_method must be one of {RESIZE_METHODS}, got {self.resize_method!r}")
        if self.source == "tfds" and not self.dataset and self.data_dir is None:
            raise ValueError("--source=tfds needs --dataset (a TFDS name such as imagenet2012)")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"--num_classes must be >= 1, got {self.num_classes}")
        if self.manual_dir is not None and not os.path.isdir(self.manual_dir):
            raise ValueError(f"--manual_dir {self.manual_dir!r} is not a directory")
        if self.data_dir is None and self.source in ("tfrecord", "folder"):
            raise ValueError(f"--source={self.source} needs --data_dir")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    augmenter_name: str | None = None
    raug_num_layers: int = 2
    raug_magnitude: float = 10.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    defer_img_mixing: bool = False

    def __post_init__(self):
        name = self.augmenter_name
        if name is not None and name not in AUGMENTERS:
            raise ValueError(f"--augmenter_name must be one of autoaugment, randaugment or empty, got {name!r}")
        if self.raug_num_layers < 0:
            raise ValueError(f"--raug_num_layers must be >= 0, got {self.raug_num_layers}")
        if not 0.0 <= self.raug_magnitude <= 30.0:
            raise ValueError(f"--raug_magnitude must be in [0, 30], got {self.raug_magnitude}")
        if self.mixup_alpha < 0:
            raise ValueError(f"--mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if self.cutmix_alpha < 0:
            raise ValueError(f"--cutmix_alpha must be >= 0, got {self.cutmix_alpha}")

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
