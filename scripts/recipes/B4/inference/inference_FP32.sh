#!/usr/bin/env bash
# EfficientNet-B4, FP32: classify every image in $INFER_DIR (default /infer_data/images), top-5 with names.
# Environment overrides and smoke mode: scripts/recipes/common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
recipe_main infer B4 FP32 "$@"
