#!/usr/bin/env bash
# EfficientNet-B0, TF32, 8x V100-32G: training throughput at the recipe's batch size (--mode training_benchmark).
# Environment overrides and smoke mode: scripts/recipes/common.sh; reference numbers: docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../../../common.sh"
recipe_main train B0 TF32 V100-32G benchmark "$@"
