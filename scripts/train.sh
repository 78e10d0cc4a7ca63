#!/usr/bin/env bash
# Install, then run the main job: `hasten train` = cpu-small on the embedded stdlib corpus (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
hasten train "$@"
