#!/usr/bin/env bash
# Create .venv (if missing) with the CPU build of torch 2.13.0 and hasten installed editable.
# Plain `pip install torch` would pull a multi-GB CUDA build; GPU users install their own torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".${extras:+[$extras]}"
