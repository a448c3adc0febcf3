"""Stage-wise (progressive) training: which epochs each stage owns and what it trains with."""

from __future__ import annotations

import dataclasses

from loops.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    first_epoch: int  # 0-based
    num_epochs: int
    image_size: int
    raug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.num_epochs


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    """Epochs split evenly (the last stage takes the remainder); sizes and strengths grow linearly.

    Stage s trains at int(base + (target - base) * (s + 1) / n), so the last stage reaches the targets
    (--train_img_size, --raug_magnitude, --mixup_alpha, --cutmix_alpha) and a single stage is just them.
    """
    n = cfg.n_stages
    per_stage = cfg.max_epochs // n
    aug = cfg.augment
    stages = []
    for s in range(n):
        frac = (s + 1) / n

        def grow(base, target):
            return base + (target - base) * frac

        stages.append(Stage(
            index=s,
            first_epoch=s * per_stage,
            num_epochs=per_stage if s < n - 1 else cfg.max_epochs - per_stage * (n - 1),
            image_size=int(grow(cfg.base_img_size, cfg.train_img_size)) if n > 1 else cfg.train_img_size,
            raug_magnitude=grow(cfg.base_raug_magnitude, aug.raug_magnitude) if n > 1 else aug.raug_magnitude,
            mixup_alpha=grow(cfg.base_mixup_alpha, aug.mixup_alpha) if n > 1 else aug.mixup_alpha,
            cutmix_alpha=grow(cfg.base_cutmix_alpha, aug.cutmix_alpha) if n > 1 else aug.cutmix_alpha,
        ))
    return stages


def stage_of_epoch(stages: list[Stage], epoch: int) -> Stage:
    for stage in stages:
        if epoch < stage.end_epoch:
            return stage
    return stages[-1]
