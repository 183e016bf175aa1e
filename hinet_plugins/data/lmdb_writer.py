"""Phases 2 and 3 of ``prepare.run_jobs``: write checked jobs into temporary LMDB folders with basicsr's
``LmdbMaker``, then rename them all into place, or remove everything the run created (see ``prepare``)."""
import json
import os
import shutil
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Union

import cv2
import numpy as np
from basicsr.utils.lmdb_util import LmdbMaker

from ..errors import ConfigError
from ..utils.tiling import tile_origins

if TYPE_CHECKING:
    from .prepare import Job

INFO_FILE = 'prepare_info.json'
TEMP_PREFIX, ASIDE_PREFIX = '.partial_', '.replaced_'


def describe_source(src: Union[str, np.ndarray]) -> str:
    return f"'{src}'" if isinstance(src, str) else 'the array'


def read_bgr(src: Union[str, np.ndarray]) -> Optional[np.ndarray]:
    """What basicsr's LMDB reader decodes to: 8-bit, 3 channels (BGR); None when the pixels cannot be decoded."""
    return src if not isinstance(src, str) else cv2.imread(src, cv2.IMREAD_COLOR)


def count_records(job: 'Job') -> int:
    if not job.crop:
        return len(job.pairs)
    size, step = job.crop
    return sum(len(tile_origins(h, size, step)) * len(tile_origins(w, size, step)) for h, w in job.shapes.values())


def _records(job):
    """(key, gt crop, lq crop) for every crop of every pair (whole images when the job does not crop)."""
    for p in job.pairs:
        gt, lq = read_bgr(p.gt), read_bgr(p.lq)
        if gt is None or lq is None or gt.shape != lq.shape:  # changed on disk since the decode check
            raise ConfigError(f"pair '{p.key}' ({describe_source(p.gt)}, {describe_source(p.lq)}) no longer decodes as it did during the "
                              'check')
        if not job.crop:
            yield p.key, gt, lq
            continue
        size, step = job.crop
        index = 0
        for y in tile_origins(gt.shape[0], size, step):
            for x in tile_origins(gt.shape[1], size, step):
                index += 1
                yield f'{p.key}_s{index:03d}', gt[y:y + size, x:x + size], lq[y:y + size, x:x + size]


def _beside(path, prefix):
    return os.path.join(os.path.dirname(os.path.abspath(path)), prefix + os.path.basename(path))


def _write_lmdb_pair(job, temps, compress_level, progress):
    from tqdm import tqdm
    total = count_records(job)
    size = job.crop[0] if job.crop else None
    raw = total * size * size * 3 if size else sum(h * w * 3 for h, w in job.shapes.values())
    makers = [LmdbMaker(tmp, map_size=int(raw * 1.2) + (64 << 20), batch=1000, compress_level=compress_level)
              for tmp in temps]
    try:
        params = [cv2.IMWRITE_PNG_COMPRESSION, compress_level]
        with tqdm(total=total, unit='img', desc=job.name, disable=not progress) as bar:
            for key, *imgs in _records(job):
                for maker, img in zip(makers, imgs):
                    ok, buf = cv2.imencode('.png', np.ascontiguousarray(img), params)
                    if not ok:
                        raise ConfigError(f"[{job.name}] cannot PNG-encode '{key}'")
                    maker.put(buf.tobytes(), key, img.shape)
                bar.update(1)
    finally:
        for maker in makers:
            maker.close()
    info = {'fingerprint': job.fingerprint(), 'records': total}
    for tmp in temps:
        with open(os.path.join(tmp, INFO_FILE), 'w') as f:
            json.dump(info, f, indent=1)
    return total


def _commit(renames):
    """Move every (temporary, final) into place; an existing final is moved aside first and removed at the end.
    If a rename fails, what was already moved is put back before the error propagates."""
    done = []  # (temporary, final, aside or None)
    try:
        for tmp, out in renames:
            aside = None
            if os.path.exists(out):
                aside = _beside(out, ASIDE_PREFIX)
                if os.path.exists(aside):
                    shutil.rmtree(aside)
                os.replace(out, aside)
            done.append((tmp, out, aside))
            os.replace(tmp, out)
    except BaseException:
        for tmp, out, aside in reversed(done):
            if os.path.exists(out) and not os.path.exists(tmp):
                os.replace(out, tmp)
            if aside:
                os.replace(aside, out)
        raise
    for _, _, aside in done:
        if aside:
            shutil.rmtree(aside, ignore_errors=True)


def write_jobs(jobs: Sequence['Job'], compress_level: int = 1, progress: bool = True) -> Dict[str, int]:
    """Write ``jobs`` (already checked) into temporary folders, then commit them all; on any failure remove every
    temporary folder and every folder created on the way, and raise. Returns {job name: records written}."""
    created, renames, written, committed = [], [], {}, False
    try:
        for job in jobs:
            job_temps = []
            for out in job.outputs:
                parent = os.path.dirname(os.path.abspath(out))
                if not os.path.exists(parent):
                    top = parent
                    while not os.path.exists(os.path.dirname(top)):
                        top = os.path.dirname(top)
                    created.append(top)
                    os.makedirs(parent)
                tmp = _beside(out, TEMP_PREFIX)
                if os.path.exists(tmp):  # left by a run that was killed
                    shutil.rmtree(tmp)
                job_temps.append(tmp)
                renames.append((tmp, out))
            try:
                written[job.name] = _write_lmdb_pair(job, job_temps, compress_level, progress)
            except ConfigError:
                raise
            except Exception as err:  # OSError, lmdb.Error (e.g. disk full), MemoryError
                raise ConfigError(f'[{job.name}] writing {job.gt_out}, {job.lq_out} failed: {type(err).__name__}: '
                                  f'{err}; nothing was written') from None
        _commit(renames)
        committed = True
    finally:
        if not committed:
            for tmp, _ in renames:
                shutil.rmtree(tmp, ignore_errors=True)
            for folder in reversed(created):
                shutil.rmtree(folder, ignore_errors=True)
    return written
