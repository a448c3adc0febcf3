#!/usr/bin/env bash
# EfficientNet-B4, FP32, 8x A100-80G: the reference's 500-epoch convergence run (train_and_eval).
# Environment overrides and smoke mode: scripts/recipes/common.sh; batch sizes and expected accuracy: docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../../../common.sh"
recipe_main train B4 FP32 A100-80G convergence "$@"
