#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) on a machine with only
# Python >= 3.11 and pip. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GISTNET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# Torch first and pinned, so pip picks the build already cached on our machines instead of
# resolving the newest release the range admits. Override with TORCH_SPEC (e.g. a CUDA index).
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
# Reinstall the project only when its declared dependencies changed.
STAMP="$VENV/.gistnet-deps"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
