"""The main job: train HINet to denoise scikit-image's photographs through BasicSR, report it beside NLM and BM3D.

1. Builds ``datasets/demo``: clean crops of the training photos (LMDB with basicsr's writer) and whole validation
   photos with Gaussian noise (sigma 25/255, fixed seed, 8-bit) -- skipped when already built with these settings.
2. Runs ``python basicsr/train.py -opt options/train/HINet-Demo.yml`` (BasicSR's own training loop, logger,
   validation, checkpoints and TensorBoard; progress is printed as it trains). The training draws new noise for
   every crop at every read (``Dataset_GaussianDenoising``), so no crop is seen twice with the same noise. The
   whole CPU budget goes to this one network: at equal iterations HINet-Demo was 1.1 dB better than NAFNet-Demo
   for 1.55x the time, so one HINet trained longer beats the two trained shorter.
3. Restores each full-resolution validation photo with the trained network, without and with TLC, and with what a
   user would pick instead (OpenCV's non-local means tuned for sigma 25, BM3D with the known sigma:
   ``hinet_plugins.demo.baselines``); prints a table of PSNR/SSIM per method, one of the network's size and
   training time, and whether it beats BM3D; writes ``demo_output/side_by_side.png`` (noisy | NLM | BM3D | HINet |
   HINet+TLC | clean, a title with the method and its mean PSNR over every column),
   ``demo_output/training_curves.png`` and ``results.json``. Exits non-zero if the network's mean gain over the
   noisy input is below 2 dB.

``--quick`` trains for a few iterations only (a smoke run, used by the tests; no gain is required then).
The flow is ``hinet_plugins.demo.run``.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hinet_plugins.cli import ArgumentParser  # noqa: E402
from hinet_plugins.demo.run import run_demo  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='a few iterations only (smoke run)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo_output'), help='folder for PNGs and results')
    args = parser.parse_args(argv)
    return run_demo(ROOT, args.out, quick=args.quick)


if __name__ == '__main__':
    sys.exit(main())
