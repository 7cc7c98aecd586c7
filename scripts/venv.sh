# Sourced by demo.sh and test.sh: creates .venv (once) and installs vpt_jax with the given extra.
# pip's output goes to .venv/install.log and is shown only if the install fails.
# usage: source scripts/venv.sh [EXTRA]
set -euo pipefail
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
if ! .venv/bin/python -m pip install --upgrade pip -e "$spec" >.venv/install.log 2>&1; then
  grep -v "^WARNING: Location" .venv/install.log | tail -40
  echo "error: installing vpt_jax$([ -n "${1:-}" ] && echo "[$1]") failed; the log is .venv/install.log" >&2
  exit 1
fi
# XLA:CPU allocates large temporaries per step; with glibc's defaults every step page-faults them
# afresh. The settings of vpt_jax/runtime.py (ALLOCATOR_TUNABLES) keep one heap instead.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
