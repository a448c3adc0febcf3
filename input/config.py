"""Configuration and description objects shared by every part of the input package."""
from __future__ import annotations

import dataclasses
import os

from flags.settings import NON_NEGATIVE, Rule, Settings, require, setting, within

SOURCES = ("auto", "tfrecord", "tfds", "folder")
RESIZE_METHODS = ("bilinear", "bicubic")
AUGMENTERS = ("autoaugment", "randaugment")

# Crop parameters of the reference recipe (Inception-style random crop, eval crop of size / (size + 32)).
DEFAULT_CROP_AREA = (0.05, 1.0)
DEFAULT_CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_CROP_PADDING = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Settings):
    data_dir: str | None = setting(
        None, "Dataset directory: TFRecord shards (train-*, validation-*), a TFDS data_dir, or an image folder "
        "(train/<class>/*, validation/<class>/*). Empty: the embedded demo dataset (UCI digits).")
    source: str = setting("auto", "What --data_dir holds; auto detects it.", flag="data_source", choices=SOURCES)
    dataset: str | None = setting(None, "TFDS dataset name (e.g. imagenet2012) when --data_source=tfds.")
    manual_dir: str | None = setting(None, "TFDS manual_dir with the ImageNet tars, for offline preparation.")
    labels_zero_based: bool = setting(False, "TFRecord labels are already 0-based (ImageNet's are 1-based).")
    skip_corrupt: bool = setting(False, "Skip and count undecodable images instead of stopping.")
    demo_cache_dir: str | None = setting(None, "Where the demo dataset's TFRecords are cached.")
    # Only needed for TFRecord shards that carry neither a labels file nor a count file: without it the
    # class count is found by scanning the validation labels once.
    num_classes: int | None = None

    def validate(self):
        require(not (self.source == "tfds" and not self.dataset and self.data_dir is None), "data_source",
                self.source, "needs --dataset (a TFDS name such as imagenet2012) or --data_dir")
        require(self.num_classes is None or self.num_classes >= 1, "num_classes", self.num_classes,
                "must be positive")
        require(self.manual_dir is None or os.path.isdir(self.manual_dir), "manual_dir", self.manual_dir,
                "is not a directory")
        require(not (self.data_dir is None and self.source in ("tfrecord", "folder")), "data_source", self.source,
                "needs --data_dir")


def _range(items) -> tuple[float, ...]:
    """A --*_range flag's list of strings (or a tuple) -> a tuple of floats; empty: not set."""
    return tuple(float(v) for v in items)


def _is_range(low: float, high: float) -> Rule:
    return Rule(lambda r: r == () or (len(r) == 2 and low < r[0] <= r[1] <= high),
                f"must be two numbers lo,hi with {low} < lo <= hi <= {high}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalPreprocessing(Settings):
    """The crop and resize that evaluation, prediction and the export apply: a centre square of
    `eval_crop_fraction` of the shorter side, else of size / (size + `crop_padding`), resized with
    `resize_method`. In evaluate.py, predict.py and export.py None means: as the run recorded (run_spec.json)."""

    eval_crop_fraction: float | None = setting(
        None, "Evaluation centre crop as a fraction of the shorter side (instead of --crop_padding; default in "
              "evaluate.py, predict.py and export.py: the run's).",
        rule=within(0, 1, low_open=True))
    crop_padding: int | None = setting(
        None, f"The evaluation centre crop keeps size / (size + crop_padding) of the shorter side (the reference: "
              f"{DEFAULT_CROP_PADDING}; 0 keeps all of it). Default: train.py decides it from the image sizes "
              "(docs/small_images.md); evaluate.py, predict.py and export.py use the run's.", rule=NON_NEGATIVE)
    resize_method: str | None = setting(None, "Image resize interpolation (default: bilinear in train.py; the "
                                              "run's in evaluate.py, predict.py and export.py).",
                                        choices=RESIZE_METHODS)

    def validate(self):
        super().validate()
        require(self.eval_crop_fraction is None or self.crop_padding is None, "eval_crop_fraction",
                self.eval_crop_fraction, f"contradicts --crop_padding={self.crop_padding}; pass one of them")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing(EvalPreprocessing):
    """Every decision between an encoded image and the model's input. A setting left at None (or an empty
    range) is decided from the data by `for_images`; the run records the decided values in run_spec.json."""

    random_crop: bool | None = setting(
        None, "Train on a random crop (an area and aspect from --crop_area_range and --crop_aspect_range, as the "
              "reference); --norandom_crop trains on the evaluation crop (all of a square image with "
              "--crop_padding 0). Default: decided from the image sizes.")
    crop_area_range: tuple[float, ...] = setting(
        (), f"Area range lo,hi of the random crop as a fraction of the image (the reference: "
            f"{DEFAULT_CROP_AREA[0]},{DEFAULT_CROP_AREA[1]}). Default: decided from the image sizes.",
        parse=_range, rule=_is_range(0.0, 1.0))
    crop_aspect_range: tuple[float, ...] = setting(DEFAULT_CROP_ASPECT, "Aspect ratio range lo,hi (width / "
                                                   "height) of the random crop.", parse=_range,
                                                   rule=_is_range(0.0, float("inf")))
    random_flip: bool = setting(True, "Flip training images left-right at random (off for digits, text and "
                                      "anything a mirror changes).")

    def validate(self):
        super().validate()
        require(self.crop_aspect_range != (), "crop_aspect_range", self.crop_aspect_range, "needs lo,hi")

    @property
    def decided(self) -> bool:
        """Nothing is left to be decided from the image sizes."""
        return (self.random_crop is not None and self.crop_area_range != ()
                and (self.crop_padding is not None or self.eval_crop_fraction is not None))

    def for_images(self, short_side: float) -> tuple[Preprocessing, str]:
        """The settings not given decided from the median shorter side of the training images, and a one-line
        notice of what was decided and which flags choose otherwise.

        Photos get the reference's ImageNet values: a random 5-100% crop, and an eval crop of size / (size +
        32). Small images (thumbnails, digits, tiles) train and evaluate on the whole image (a centre square),
        still flipped unless --norandom_flip: the reference's smallest crop of them is a few pixels across,
        too little to hold what the label names, and its eval crop cuts off what training showed."""
        smallest_crop = short_side * DEFAULT_CROP_AREA[0] ** 0.5
        small = smallest_crop < MIN_CROP_PIXELS
        chosen = SMALL_IMAGES if small else REFERENCE_CHOICES
        given = {name: getattr(self, name) for name in chosen if getattr(self, name) not in (None, ())}
        if self.eval_crop_fraction is not None:
            given["crop_padding"] = None  # the fraction decides the eval crop
        decided = dataclasses.replace(self, **{**chosen, **given}, resize_method=self.interpolation)
        filled = ", ".join(_flag_text(k, v) for k, v in chosen.items() if k not in given)
        notice = (f"input: the training images are {'small' if small else 'photo-sized'} (median shorter side "
                  f"{short_side:g} px: a {DEFAULT_CROP_AREA[0]:g} area crop keeps {smallest_crop:.0f} px across, "
                  f"{'fewer than' if small else 'at least'} {MIN_CROP_PIXELS}); "
                  + (f"using {filled}; pass these flags to choose otherwise." if filled else
                     "every preprocessing setting was given."))
        return decided, notice

    @property
    def interpolation(self) -> str:
        return self.resize_method or "bilinear"

    def eval_fraction(self, image_size: int) -> float:
        """The share of the shorter side the evaluation centre crop keeps at `image_size`."""
        if self.eval_crop_fraction is not None:
            return self.eval_crop_fraction
        padding = DEFAULT_CROP_PADDING if self.crop_padding is None else self.crop_padding
        return image_size / (image_size + padding)

    def with_eval_overrides(self, overrides: EvalPreprocessing) -> Preprocessing:
        """These (recorded) settings with the eval-side ones that `overrides` sets; a --crop_padding given
        there replaces a recorded --eval_crop_fraction, and the other way round."""
        changes = {f.name: getattr(overrides, f.name) for f in dataclasses.fields(EvalPreprocessing)
                   if getattr(overrides, f.name) is not None}
        if "crop_padding" in changes:
            changes["eval_crop_fraction"] = None
        elif "eval_crop_fraction" in changes:
            changes["crop_padding"] = None
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, raw: dict) -> Preprocessing:
        """From its JSON form (`dataclasses.asdict`, ranges as lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _flag_text(name: str, value) -> str:
    if isinstance(value, bool):
        return f"--{'' if value else 'no'}{name}"
    return f"--{name}=" + (",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value))


# What `Preprocessing.for_images` fills in. Images count as small when the reference's smallest crop of their
# median shorter side (sqrt(0.05) = 22% of it) is under MIN_CROP_PIXELS across, i.e. a shorter side of 143 px
# or less: thumbnails, digits, icons, microscopy tiles, CIFAR-like sets. ImageNet's photos (shorter sides of a
# few hundred pixels) never are, whatever the training size, so the reference recipes keep their values.
MIN_CROP_PIXELS = 32
REFERENCE_CHOICES = {"random_crop": True, "crop_area_range": DEFAULT_CROP_AREA, "crop_padding": DEFAULT_CROP_PADDING}
SMALL_IMAGES = {"random_crop": False, "crop_area_range": (0.5, 1.0), "crop_padding": 0}
# The reference's values throughout: what the pipeline applies when it is given no settings.
REFERENCE = Preprocessing(**REFERENCE_CHOICES, resize_method="bilinear")


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

    @property
    def record_format(self) -> str:
        return "files" if self.source == "folder" else "tfrecord"
