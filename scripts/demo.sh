#!/usr/bin/env bash
# The main job: build a noisy/clean dataset from scikit-image's photographs, train HINet and NAFNet on it through
# `python basicsr/train.py -opt options/train/{HINet,NAFNet}-Demo.yml`, then report PSNR/SSIM beside non-local
# means and BM3D, and write PNGs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
