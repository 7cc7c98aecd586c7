#!/usr/bin/env bash
# The main job on the embedded offline demo, from a clean clone: creates .venv, installs vpt_jax, and
# runs the demo study (configs/demo.py) into runs/demo (extra arguments are passed to vpt_jax.main).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
.venv/bin/python -m vpt_jax.main --config configs/demo.py --workdir runs/demo "$@"
