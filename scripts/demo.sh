#!/usr/bin/env bash
# The main job on the embedded default: the offline sample, end to end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m tools.prepare_dataset --config configs/data/sample_text.yaml
python -m tools.train_gistnet --dataset data/sample_text/train.arrow --config configs/runs/gistnet_example.yaml
