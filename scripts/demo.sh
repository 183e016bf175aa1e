#!/usr/bin/env bash
# The main job: build a noisy/clean dataset from scikit-image's photographs, train HINet on it through
# `python basicsr/train.py -opt options/train/HINet-Demo.yml`, then report PSNR/SSIM and write PNGs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
