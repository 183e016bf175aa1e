#!/usr/bin/env bash
# One command that proves the package's CUDA paths and measures them (benchmarks/gpu_suite.py says what it runs):
#
#   bash benchmarks/gpu_suite.sh --out DIR             # on a CUDA machine, about 8 minutes on one GPU
#   bash benchmarks/gpu_suite.sh --dry-run --out DIR   # the same code paths on the CPU at tiny sizes (< 1 minute)
#   bash benchmarks/gpu_suite.sh --fetch-wheels [3.12] # here, with the package index: wheels for a machine without
#
# The interpreter: $PYTHON if set; else ./.venv/bin/python (scripts/setup_env.sh); else a `python3` that already
# has torch (a GPU machine's image, e.g. torch 2.11 + CUDA 13 under /opt/torch/.venv). What that python3 lacks of
# basicsr 1.4.2 and lmdb is installed from ./.gpu_wheels (no index needed) into a temporary folder put on
# PYTHONPATH, together with this checkout (the package is not pip-installed there). If no interpreter has torch,
# scripts/setup_env.sh builds ./.venv (needs the package index).
#
# A machine that cannot reach the package index gets the wheels this way: run `--fetch-wheels` here (basicsr's
# wheel is built from its sdist against ./.venv's torch; lmdb's is downloaded for CPython 3.12 manylinux x86-64 or
# the version given), then take ./.gpu_wheels along (about 1 MB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
wheels=${GPU_WHEELS:-$repo/.gpu_wheels}  # where --fetch-wheels writes and the suite installs from

has() {  # has PYTHON MODULE...: every module can be found (not imported: basicsr needs hinet_plugins.basicsr_ext first).
  # Looked up from / : here the launcher folder basicsr/ would pass for the package.
  local py
  case $1 in /*) py=$1 ;; */*) py=$PWD/$1 ;; *) py=$(command -v "$1") || return 1 ;; esac
  shift
  (cd / && "$py" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' \
    "$@" 2>/dev/null)
}

if [ "${1:-}" = "--fetch-wheels" ]; then
  pyver=${2:-3.12}
  [ -x .venv/bin/python ] || bash scripts/setup_env.sh
  mkdir -p "$wheels"
  # basicsr 1.4.2 is published as an sdist whose setup.py imports torch: build its pure-Python wheel here
  .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$wheels" basicsr==1.4.2
  lmdb=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("lmdb"))')
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
  done
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" -d "$wheels" "lmdb==$lmdb"
  ls -l "$wheels"
  exit 0
fi

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ] && has .venv/bin/python torch basicsr lmdb; then
    py=.venv/bin/python
  elif command -v python3 >/dev/null && has python3 torch; then
    py=python3
  else
    bash scripts/setup_env.sh
    py=.venv/bin/python
  fi
fi
missing=()
for m in basicsr lmdb; do has "$py" "$m" || missing+=("$m"); done
extra=$repo
if [ ${#missing[@]} -gt 0 ]; then
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "hinet_plugins: error: $py lacks ${missing[*]} and there is no .gpu_wheels/ folder: run" \
         "'bash benchmarks/gpu_suite.sh --fetch-wheels' on a machine with the package index and bring it" >&2
    exit 2
  fi
  site=${TMPDIR:-/tmp}/hinet_gpu_suite_site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl
  extra=$site:$repo
fi
export PYTHONPATH=$extra${PYTHONPATH:+:$PYTHONPATH}
exec "$py" benchmarks/gpu_suite.py "$@"
