#!/usr/bin/env bash
# The whole test suite from a clean clone: creates .venv, installs vpt_jax with its dev extra,
# checks formatting and lint with ruff, then runs pytest (CPU-only, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh dev
.venv/bin/ruff format --check .
.venv/bin/ruff check .
export JAX_PLATFORMS=cpu
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
