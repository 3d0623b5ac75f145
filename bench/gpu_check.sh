#!/usr/bin/env bash
# The GPU check in one command (bench/README.md): on the GPU machine, from the repository root,
#   bash bench/gpu_check.sh             installs the wheels carried in .whl/ (`make gpu-wheels` here), then runs
#                                       python -m bench.gpu_check; figures under $OUT (gpu_check.json, .md, log.txt)
#   bash bench/gpu_check.sh --dry       the same on this CPU machine with tiny sizes (no install), to debug it
# The GPU machine has PyTorch but neither open_clip nor faiss, and cannot download.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu_check}"
mkdir -p "$OUT"
PY=python3
if [ "${1:-}" = "--dry" ]; then
  PY="${PY_DRY:-.venv/bin/python}"
else
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run 'make gpu-wheels' and carry .whl"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OUT
nvidia-smi 2>/dev/null | head -15
$PY -m bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
