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
# XLA:CPU allocates large temporaries per step; huge pages cut their page-fault cost (see benchmarks/).
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
