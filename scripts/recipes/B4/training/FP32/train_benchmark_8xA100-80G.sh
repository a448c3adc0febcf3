#!/usr/bin/env bash
# EfficientNet-B4, FP32, 8x A100-80G: training throughput at the recipe's batch size (--mode training_benchmark).
# Environment overrides and smoke mode: scripts/recipes/common.sh; reference numbers: docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../../../common.sh"
recipe_main train B4 FP32 A100-80G benchmark "$@"
