#!/usr/bin/env bash
# The one command to run first on a GPU: every CUDA path on tiny models, then the 5B LoRA (and,
# time allowing, fp8 storage and the full finetune) at full size, predicted beside measured.
#
#   bash bench/gpu_check.sh [--out DIR] [--minutes 8] [--dry-run]
#
# Results go to DIR (default $OUT, else ./gpu-check): gpu_check.md, runs.jsonl, phase logs.
# The phases and their minutes: bench/gpu_check.py.
#
# Its Python: $PYTHON if set; else the repo's .venv when it travelled with the tree and holds
# torch; else `python3` (a GPU image's, which holds torch, transformers, peft and accelerate).
# Packages that Python lacks (diffusers, bitsandbytes, pydantic, av ...) travel as wheels in
# .whl/ (or the folder $WHEELS names) and are installed offline, before anything else, into
# /tmp/gpu-check-site, which goes first on PYTHONPATH. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    python=$PYTHON
elif [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then
    python=.venv/bin/python
else
    python=python3
fi

wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
    echo "Installing the wheels of $wheels into /tmp/gpu-check-site (offline) ..."
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site "$wheels"/*.whl
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$python" bench/gpu_check.py "$@"
