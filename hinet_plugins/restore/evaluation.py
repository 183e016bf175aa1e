"""Score a folder of restored images against their ground truth with basicsr's own metrics (``scripts/evaluate.py``).

Each restored image is paired with the ground truth of the same stem and scored with basicsr's
``calculate_psnr`` / ``calculate_ssim`` on the values basicsr's validation uses, so on saved PNGs the means equal
what ``basicsr/test.py`` logs (a lossy format does not). basicsr's test saves ``<stem>_<suffix>.png``: when needed,
the one suffix that maps every restored stem onto a ground-truth stem is found and stripped (``suffix`` sets it).
Every image must have its partner, otherwise nothing is scored and every unmatched name is reported. Values:
read unchanged (BGR); 16-bit scaled to [0, 255]; alpha left out; gray scored as one channel.
"""
import csv
import math
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..errors import ConfigError
from ..utils.images import IMG_EXTS

MAX_LISTED = 12
SSIM_WINDOW = 11  # basicsr's SSIM: an 11x11 Gaussian window, valid positions only


def list_images(folder: str, flag: str) -> Dict[str, str]:
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag}: folder '{folder}' does not exist")
    found = {os.path.splitext(n)[0]: os.path.join(folder, n) for n in sorted(os.listdir(folder))
             if n.lower().endswith(IMG_EXTS) and os.path.isfile(os.path.join(folder, n))}
    if not found:
        raise ConfigError(f"{flag}: folder '{folder}' holds no images ({', '.join(IMG_EXTS)})")
    return found


def _find_suffix(restored, gt):
    """The suffix that maps every restored stem onto a GT stem, or None (the shortest such one)."""
    unmatched = sorted(s for s in restored if s not in gt)
    probe = unmatched[0]
    candidates = sorted({probe[len(g):] for g in gt if probe.startswith(g) and len(probe) > len(g)}, key=len)
    for suffix in candidates:
        mapped = [s[:-len(suffix)] if s.endswith(suffix) else None for s in restored]
        if all(m in gt for m in mapped) and len(set(mapped)) == len(mapped):
            return suffix
    return None


def pair_images(restored_dir: str, gt_dir: str,
                suffix: Optional[str] = None) -> Tuple[List[Tuple[str, str, str]], str]:
    """[(name, restored path, gt path)] sorted by name, and the suffix that was stripped ('' when none)."""
    restored, gt = list_images(restored_dir, '--restored'), list_images(gt_dir, '--gt')
    if suffix is None:
        suffix = '' if all(s in gt for s in restored) else (_find_suffix(restored, gt) or '')
    stems = {}
    for stem, path in restored.items():
        if suffix and stem.endswith(suffix):
            stem = stem[:-len(suffix)]
        stems[stem] = path
    only_restored, only_gt = sorted(set(stems) - set(gt)), sorted(set(gt) - set(stems))
    if only_restored or only_gt:
        def show(names):
            return f'{names[:5]}{" ..." if len(names) > 5 else ""}'
        how = f" (after stripping the suffix '{suffix}')" if suffix else ''
        raise ConfigError(f"the folders do not hold the same names{how}: {len(only_restored)} restored image(s) "
                          f"without ground truth in '{gt_dir}': {show(only_restored)}; {len(only_gt)} ground-truth "
                          f"image(s) without a restored image in '{restored_dir}': {show(only_gt)}"
                          + ('' if suffix else '; --suffix strips a suffix of the restored names'))
    return [(stem, stems[stem], gt[stem]) for stem in sorted(stems)], suffix


def read_for_metrics(path: str) -> np.ndarray:
    """HxW or HxWxC array in [0, 255] (uint8 kept as it is), BGR, alpha left out; ConfigError if unreadable."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f"image '{path}' cannot be read or decoded")
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[..., :img.shape[2] - 1]
        img = img[..., 0] if img.shape[2] == 1 else img
    if img.dtype == np.uint16:
        img = img.astype(np.float64) * (255.0 / 65535.0)
    elif img.dtype != np.uint8:
        raise ConfigError(f"image '{path}': {img.dtype} pixels; only 8- and 16-bit images are scored")
    return img


def evaluate_folders(restored_dir: str, gt_dir: str, y: bool = False, crop_border: int = 0,
                     suffix: Optional[str] = None) -> Tuple[List[dict], str]:
    """Score every pair; returns (rows, suffix stripped). Each row: name, restored, gt, height, width, psnr, ssim.
    Every pair is read and checked before the result is returned (problems raise one ConfigError)."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    if crop_border < 0:
        raise ConfigError(f'--crop-border must be 0 or more, got {crop_border}')
    pairs, suffix = pair_images(restored_dir, gt_dir, suffix)
    rows, problems = [], []
    for name, rest_path, gt_path in pairs:
        try:
            out, ref = read_for_metrics(rest_path), read_for_metrics(gt_path)
        except ConfigError as err:
            problems.append(str(err))
            continue
        if out.shape != ref.shape:
            problems.append(f"'{name}': the restored image is {'x'.join(map(str, out.shape))} but the ground truth "
                            f"is {'x'.join(map(str, ref.shape))}")
            continue
        left = (out.shape[0] - 2 * crop_border, out.shape[1] - 2 * crop_border)
        if min(left) < SSIM_WINDOW:
            problems.append(f"'{name}': --crop-border {crop_border} leaves {max(left[0], 0)}x{max(left[1], 0)} of "
                            f'{out.shape[0]}x{out.shape[1]} pixels; SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW}')
            continue
        kw = dict(crop_border=crop_border, input_order='HWC', test_y_channel=y)
        rows.append({'name': name, 'restored': rest_path, 'gt': gt_path, 'height': out.shape[0],
                     'width': out.shape[1], 'psnr': float(calculate_psnr(out, ref, **kw)),
                     'ssim': float(calculate_ssim(out, ref, **kw))})
    if problems:
        lines = '\n'.join(f'  - {p}' for p in problems[:MAX_LISTED])
        more = f'\n  ... and {len(problems) - MAX_LISTED} more' if len(problems) > MAX_LISTED else ''
        raise ConfigError(f'{len(problems)} of {len(pairs)} pair(s) cannot be scored, nothing was written:\n'
                          f'{lines}{more}')
    return rows, suffix


def mean_row(rows: List[dict]) -> dict:
    return {'name': 'mean', 'restored': '', 'gt': '', 'height': '', 'width': '',
            'psnr': sum(r['psnr'] for r in rows) / len(rows), 'ssim': sum(r['ssim'] for r in rows) / len(rows)}


def write_csv(rows: List[dict], path: str) -> str:
    """One line per pair and a last 'mean' line, full float precision; written to a temporary name, then renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"--csv: folder '{folder}' does not exist")
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.partial')
    fields = ['name', 'restored', 'gt', 'height', 'width', 'psnr', 'ssim']
    try:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in [*rows, mean_row(rows)]:
                writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def markdown_table(rows: List[dict], y: bool = False, crop_border: int = 0) -> str:
    chan = 'Y' if y else 'RGB'
    lines = [f'| image | size | PSNR {chan} (dB) | SSIM {chan} |', '|---|---|---:|---:|']

    def fmt(v, digits):
        return f'{v:.{digits}f}' if math.isfinite(v) else str(v)
    for r in rows:
        lines.append(f"| {r['name']} | {r['height']}x{r['width']} | {fmt(r['psnr'], 4)} | {fmt(r['ssim'], 4)} |")
    m = mean_row(rows)
    lines.append(f"| **mean** ({len(rows)} images) | | **{fmt(m['psnr'], 4)}** | **{fmt(m['ssim'], 4)}** |")
    if crop_border:
        lines.append(f'\n(crop border {crop_border} px)')
    return '\n'.join(lines)
