#!/usr/bin/env bash
# The whole test suite, after setting up ./.venv. Extra arguments go to pytest (e.g. -k hinet).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest tests "$@"
