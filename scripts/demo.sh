#!/usr/bin/env bash
# The main job on the embedded offline demo, from a clean clone: creates .venv, installs vpt_jax, runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
.venv/bin/python examples/classify.py "$@"
