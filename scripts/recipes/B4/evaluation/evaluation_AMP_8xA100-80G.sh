#!/usr/bin/env bash
# EfficientNet-B4, mixed precision (AMP): evaluate the 8x A100-80G convergence run's checkpoint (raw and EMA weights) on validation.
# Environment overrides and smoke mode: scripts/recipes/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
recipe_main eval B4 AMP A100-80G "$@"
