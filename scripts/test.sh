#!/usr/bin/env bash
# The test command: set up .venv if needed, then lint and run the whole suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check .
python -m pytest "$@"
