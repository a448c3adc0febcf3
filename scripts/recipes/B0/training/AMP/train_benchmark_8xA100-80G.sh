#!/usr/bin/env bash
# EfficientNet-B0, mixed precision (AMP), 8x A100-80G: training throughput at the recipe's batch size (--mode training_benchmark).
# Environment overrides and smoke mode: scripts/recipes/common.sh; reference numbers: docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../../../common.sh"
recipe_main train B0 AMP A100-80G benchmark "$@"
