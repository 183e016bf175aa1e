#!/usr/bin/env bash
# Creates (or reuses) ./.venv with everything hinet-plugins needs. Safe to re-run: it reinstalls only when
# setup.py or this script changed. Needs only python3 (3.9+) and access to the package index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.hinet_plugins_installed
want=$(cat setup.py scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing into .venv (torch 2.14.1, torchvision 0.29.1, basicsr 1.4.2, hinet-plugins) ..."
  pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
  pip install -q --upgrade pip setuptools wheel
  pip install -q torch==2.14.1 torchvision==0.29.1
  # basicsr's setup.py imports torch at build time: build it against the torch just installed
  pip install -q --no-build-isolation basicsr==1.4.2
  pip install -q --no-build-isolation -e '.[test,wandb]'
  # the web page (gradio) and spandrel extras need Python >= 3.10; without them their tests are skipped
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    pip install -q --no-build-isolation -e '.[test,wandb,webui,spandrel]'
  fi
  echo "$want" > "$stamp"
fi
# tests/webui/test_webui.py drives Debian's chromium + chromedriver: installed when missing and this runs as root
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing chromium and chromium-driver (apt-get) for the browser test ..."
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "[setup] could not install chromium: tests/webui/test_webui.py will be skipped" >&2
  else
    echo "[setup] chromium/chromedriver missing (apt-get install chromium chromium-driver, as root):" \
         "tests/webui/test_webui.py will be skipped" >&2
  fi
fi
