#!/usr/bin/env bash
# The whole test suite, after setting up ./.venv. Extra arguments go to pytest (e.g. -k hinet, -m "not slow").
# Two workers by default (pytest-xdist, one per core; each test module stays on one worker so its shared fixtures
# run once); HINET_TEST_WORKERS=4 for more, HINET_TEST_WORKERS=0 for one process.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
workers="${HINET_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
    exec .venv/bin/python -m pytest tests "$@"
fi
exec .venv/bin/python -m pytest tests -n "$workers" --dist loadscope "$@"
