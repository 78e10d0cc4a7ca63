#!/usr/bin/env bash
# Install (torch CPU, hasten[dev,hf]), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev,hf
. .venv/bin/activate
export HASTEN_CACHE="${HASTEN_CACHE:-$PWD/.cache/hasten}"
python -m pytest "$@"
