"""The demo's report: score every method on the held-out photos and print it as markdown tables.

A *method* is a column: the noisy input itself, the classical baselines (``demo/baselines``) and each trained
network with and without TLC. PSNR / SSIM are basicsr's ``calculate_psnr`` / ``calculate_ssim`` on the RGB
uint8 images (crop border 0, not the Y channel), the same as the training's validation. The verdict line compares
the best trained network with BM3D, whichever wins, as measured. The side-by-side picture has a title over every
column (method and its mean PSNR), drawn with OpenCV's Hershey font (no font file needed).
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from basicsr.metrics import calculate_psnr, calculate_ssim

INPUT = 'noisy input'


def score(out: np.ndarray, gt: np.ndarray) -> Tuple[float, float]:
    """(PSNR, SSIM) of one uint8 image against its ground truth."""
    return float(calculate_psnr(out, gt, 0)), float(calculate_ssim(out, gt, 0))


def score_photo(name: str, gt: np.ndarray, lq: np.ndarray, outputs: Mapping[str, np.ndarray]) -> dict:
    """One row: ``outputs`` maps method -> restored image; the noisy input is scored first."""
    scores = {INPUT: score(lq, gt)}
    scores.update({method: score(img, gt) for method, img in outputs.items()})
    return {'photo': f'{name} {gt.shape[1]}x{gt.shape[0]}', 'scores': scores}


def mean_scores(rows: List[dict]) -> Dict[str, Tuple[float, float]]:
    methods = list(rows[0]['scores'])
    return {m: tuple(float(np.mean([r['scores'][m][i] for r in rows])) for i in (0, 1)) for m in methods}


def results_table(rows: List[dict]) -> str:
    """Markdown: one line per photo and a bold mean line; each cell is ``PSNR / SSIM`` of one method."""
    methods = list(rows[0]['scores'])
    mean = mean_scores(rows)
    lines = ['| photo | ' + ' | '.join(methods) + ' |', '|' + '---|' * (len(methods) + 1)]

    def cells(scores, bold):
        fmt = '**{:.2f}** / {:.4f}' if bold else '{:.2f} / {:.4f}'
        return ' | '.join(fmt.format(*scores[m]) for m in methods)

    for r in rows:
        lines.append(f"| {r['photo']} | {cells(r['scores'], False)} |")
    lines.append(f'| **mean** | {cells(mean, True)} |')
    return '\n'.join(lines)


def networks_table(networks: List[dict]) -> str:
    """``networks``: list of dicts (name, arch, params, iterations, train_s, psnr, gain) -> markdown. The time is
    the launcher's whole run (start-up, data loading and the periodic validations included)."""
    lines = ['| network | parameters | iterations | wall time of basicsr/train.py | mean PSNR (dB) | '
             'gain over input (dB) |',
             '|---|---|---|---|---|---|']
    for n in networks:
        lines.append(f"| {n['name']} ({n['arch']}) | {n['params']:,} | {n['iterations']} | "
                     f"{n['train_s']:.0f} s | "
                     f"{n['psnr']:.2f} | {n['gain']:+.2f} |")
    return '\n'.join(lines)


def verdict(mean: Mapping[str, Tuple[float, float]], networks: Sequence[str], reference: str = 'BM3D') -> str:
    """One sentence: does the best trained network (with or without TLC) beat ``reference`` on the mean PSNR?"""
    if reference not in mean or not networks:
        return ''
    candidates = [m for m in mean if any(m == n or m.startswith(n + '+') for n in networks)]
    best = max(candidates, key=lambda m: mean[m][0])
    diff = mean[best][0] - mean[reference][0]
    word = 'beats' if diff > 0 else 'does not beat'
    return (f'Best trained network: {best}, mean {mean[best][0]:.2f} dB; it {word} {reference} '
            f'({mean[reference][0]:.2f} dB): {diff:+.2f} dB on these photos.')


def column_titles(methods: Sequence[str], mean: Mapping[str, Tuple[float, float]],
                  extra: Sequence[str] = ()) -> List[str]:
    """``'<method> <mean PSNR> dB'`` for each method of ``mean`` named in ``methods``, then the ``extra`` titles."""
    return [f'{m} {mean[m][0]:.2f} dB' for m in methods] + list(extra)


def title_band(titles: Sequence[str], widths: Sequence[int], height: int = 36) -> np.ndarray:
    """A white band with each title centred (black, anti-aliased) over its column of ``widths`` pixels; the font
    shrinks until the title fits the column."""
    band = np.full((height, sum(widths), 3), 255, np.uint8)
    x = 0
    for text, width in zip(titles, widths):
        scale = 0.7
        while True:
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            if tw <= width - 8 or scale <= 0.3:
                break
            scale -= 0.05
        cv2.putText(band, text, (x + max(0, (width - tw) // 2), (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
        x += width
    return band


def contact_sheet(rows_of_images: Sequence[Sequence[np.ndarray]], gap: int = 8,
                  titles: Optional[Sequence[str]] = None) -> np.ndarray:
    """Stack rows (each a list of equally tall uint8 images, concatenated left to right) with white gaps. With
    ``titles`` (one per image of a row), a band of column titles goes on top, placed by the first row's widths."""
    if titles is not None and len(titles) != len(rows_of_images[0]):
        raise ValueError(f'{len(titles)} titles for {len(rows_of_images[0])} columns')
    panels = [np.concatenate(images, axis=1) for images in rows_of_images]
    if titles is not None:
        panels.insert(0, title_band(titles, [img.shape[1] for img in rows_of_images[0]]))
    width = max(p.shape[1] for p in panels)
    return np.concatenate([np.pad(p, ((0, gap), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                           for p in panels], axis=0)
