#!/usr/bin/env bash
# EfficientNet-B0, TF32: evaluate the 8x V100-32G convergence run's checkpoint (raw and EMA weights) on validation.
# Environment overrides and smoke mode: scripts/recipes/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
recipe_main eval B0 TF32 V100-32G "$@"
