"""The machinery behind ``scripts/prepare_data.py``: image pairs -> BasicSR LMDBs, checked first, written as one unit.

A dataset (``official_datasets.py``: SIDD, GoPro, REDS, Rain13k; ``paired_folders.py``: the user's own folders)
is a list of :class:`Job` s, each a GT/LQ pair of output LMDBs and the image pairs that go in; ``run_jobs`` checks,
writes and commits them (phases in its docstring; writing and committing: ``lmdb_writer``).

Decisions:
- Every problem is found before the first byte is written and reported in ONE ``ConfigError`` (a missing file and
  a file cut short alike), instead of one per run.
- A dataset's jobs succeed or fail together: outputs are written to temporary folders and renamed at the end; a
  failed run leaves the tree as it found it.
- Re-runs are idempotent (``prepare_info.json`` fingerprints, ``job_state``), and outputs are never taken for
  inputs (``is_output_dir``): e.g. GOPRO_Large's LMDBs beside its scene folders are not scenes on the next run.
- LMDB keys are file stems restricted to ``[A-Za-z0-9_-]`` (``lmdb_key``: a '.' would break basicsr's
  ``meta_info.txt`` parsing); crops get ``_s001``, ``_s002``, ... in raster order.
"""
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..utils.images import IMG_EXTS, image_header
from .lmdb_writer import ASIDE_PREFIX, INFO_FILE, TEMP_PREFIX, describe_source, read_bgr, write_jobs

MAX_LISTED = 12  # problems listed in one error message


def lmdb_key(name: str) -> str:
    """An LMDB key from a file stem or composed name: ASCII letters, digits, '_' and '-' only (no '.')."""
    return re.sub(r'[^A-Za-z0-9_-]', '_', name)


def is_output_dir(path: str) -> bool:
    """True for a folder this tool writes (an LMDB, a temporary or moved-aside one): never a source of images."""
    base = os.path.basename(os.path.normpath(path))
    return (base.lower().endswith('.lmdb') or base.startswith((TEMP_PREFIX, ASIDE_PREFIX))
            or os.path.isfile(os.path.join(path, 'data.mdb')) or os.path.isfile(os.path.join(path, INFO_FILE)))


def sub_dirs(folder: str) -> List[str]:
    """Sorted names of the sub-folders of ``folder`` that are inputs (outputs and hidden folders left out)."""
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith('.')
                  and not is_output_dir(os.path.join(folder, d)))


def list_images(folder: str, recursive: bool = False) -> Dict[str, str]:
    """{relative path without extension: full path} of the images in ``folder`` (any case of extension); with
    ``recursive``, sub-folders too, except output and hidden folders."""
    found = {}
    for top, dirs, files in os.walk(folder):
        dirs[:] = sub_dirs(top) if recursive else []
        for name in files:
            if name.lower().endswith(IMG_EXTS) and not name.startswith('.'):
                rel = os.path.relpath(os.path.join(top, name), folder)
                found[os.path.splitext(rel)[0]] = os.path.join(top, name)
    return dict(sorted(found.items()))


@dataclass(eq=False)
class Pair:
    key: str
    gt: object  # image path, or an HxWx3 uint8 BGR array
    lq: object


@dataclass(eq=False)
class Job:
    """One GT/LQ pair of output LMDBs and the image pairs that go in (cropped when ``crop`` = (size, step))."""
    name: str
    gt_out: str
    lq_out: str
    pairs: list
    crop: Optional[tuple] = None
    shapes: dict = field(default_factory=dict)  # key -> (h, w) of both images, filled by check_pairs
    headers: dict = field(default_factory=dict)  # image file -> (h, w) its header says, filled by check_pairs
    source_files: tuple = ()  # files the pairs come from when they are arrays (SIDD's .mat)

    @property
    def outputs(self) -> Tuple[str, str]:
        return self.gt_out, self.lq_out

    def fingerprint(self) -> dict:
        """Dataset job, crop settings and a hash of the source names and sizes (cheap: no pixel is read)."""
        digest = hashlib.sha1()
        for p in self.pairs:
            digest.update(p.key.encode())
            for src in (p.gt, p.lq):
                if isinstance(src, str):
                    digest.update(f'|{os.path.basename(src)}|{os.path.getsize(src)}'.encode())
        for src in self.source_files:
            digest.update(f'|{os.path.basename(src)}|{os.path.getsize(src)}'.encode())
        return {'job': self.name, 'pairs': len(self.pairs), 'crop': list(self.crop) if self.crop else None,
                'sources_sha1': digest.hexdigest()}


class Problems:
    """Collects problems so the user sees all of them at once."""

    def __init__(self, dataset: str) -> None:
        self.dataset, self.items = dataset, []

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self) -> None:
        if self.items:
            more = f'\n  ... and {len(self.items) - MAX_LISTED} more' if len(self.items) > MAX_LISTED else ''
            lines = '\n'.join(f'  - {m}' for m in self.items[:MAX_LISTED])
            raise ConfigError(f'{self.dataset}: {len(self.items)} problem(s) found, nothing was written:\n'
                              f'{lines}{more}')


def require_dir(path: str, problems: Problems, hint: str = '') -> bool:
    if not os.path.isdir(path):
        problems.add(f"folder '{path}' is missing{hint}")
        return False
    return True


def pair_folders(gt_dir: str, lq_dir: str, problems: Problems, key_prefix: str = '',
                 recursive: bool = False) -> List[Pair]:
    """Pairs of images with the same stem in ``gt_dir`` and ``lq_dir`` (extensions may differ)."""
    gt, lq = list_images(gt_dir, recursive), list_images(lq_dir, recursive)
    if not gt and not lq:
        problems.add(f"no images in '{gt_dir}' nor in '{lq_dir}'")
    only_gt, only_lq = sorted(set(gt) - set(lq)), sorted(set(lq) - set(gt))
    if only_gt or only_lq:
        problems.add(f"unpaired file names between '{gt_dir}' ({len(gt)} images) and '{lq_dir}' ({len(lq)}): "
                     f'only in the first: {only_gt[:5]}{" ..." if len(only_gt) > 5 else ""}, only in the second: '
                     f'{only_lq[:5]}{" ..." if len(only_lq) > 5 else ""}')
    return [Pair(lmdb_key(key_prefix + stem.replace(os.sep, '_')), gt[stem], lq[stem]) for stem in sorted(gt)
            if stem in lq]


def check_pairs(job: Job, problems: Problems) -> None:
    """Header check of every pair: readable, same size within the pair, not smaller than the crop, unique keys."""
    seen = {}
    for p in job.pairs:
        if p.key in seen:
            problems.add(f"two pairs map to the LMDB key '{p.key}': {seen[p.key]} and {p.gt}")
        seen[p.key] = p.gt
        sizes = []
        for src in (p.gt, p.lq):
            if isinstance(src, str):
                try:
                    sizes.append(image_header(src)[:2])
                except ConfigError as err:
                    problems.add(str(err))
                else:
                    job.headers[src] = sizes[-1]
            else:
                sizes.append(src.shape[:2])
        if len(sizes) < 2:
            continue
        if sizes[0] != sizes[1]:
            problems.add(f"pair '{p.key}': sizes differ, {describe_source(p.gt)} is {sizes[0][0]}x{sizes[0][1]} but "
                         f'{describe_source(p.lq)} is {sizes[1][0]}x{sizes[1][1]}')
        elif job.crop and min(sizes[0]) < job.crop[0]:
            problems.add(f"pair '{p.key}': {describe_source(p.gt)} is {sizes[0][0]}x{sizes[0][1]}, smaller than the crop size "
                         f'{job.crop[0]} (lower --crop)')
        job.shapes[p.key] = sizes[0]


def _decode_problem(path, header_hw):
    cut_short = f"image '{path}' cannot be decoded (its header reads, the pixels do not: the file may be cut short)"
    if path.lower().endswith(('.jpg', '.jpeg')):  # libjpeg only warns on a truncated file and fills it with gray
        from PIL import Image
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as err:  # noqa: BLE001  (any decoder error means the same to the user)
            return f'{cut_short}: {err}'
    img = read_bgr(path)
    if img is None:
        return cut_short
    if img.shape[:2] != tuple(header_hw):
        return f"image '{path}' decodes to {img.shape[0]}x{img.shape[1]}, its header says {header_hw[0]}x{header_hw[1]}"
    return None


def decode_check(jobs: Sequence[Job], problems: Problems, progress: bool = True) -> None:
    """Decode every image file of ``jobs`` (threads: cv2 releases the GIL) and add each failure to ``problems``."""
    from tqdm import tqdm
    # each file against its own header: a pair whose sizes differ is reported once, by check_pairs
    work = [(src, job.headers[src]) for job in jobs for p in job.pairs for src in (p.gt, p.lq)
            if isinstance(src, str) and src in job.headers]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda item: _decode_problem(*item), work)
        for problem in tqdm(results, total=len(work), unit='img', desc='decode check', disable=not progress):
            if problem:
                problems.add(problem)


def _read_info(lmdb_path):
    try:
        with open(os.path.join(lmdb_path, INFO_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def job_state(job: Job) -> str:
    """'done' (both outputs built from these sources with these settings), 'absent' or a reason it is neither."""
    infos = [_read_info(p) if os.path.exists(p) else 'absent' for p in job.outputs]
    if infos == ['absent', 'absent']:
        return 'absent'
    want = job.fingerprint()
    if all(isinstance(i, dict) and i.get('fingerprint') == want for i in infos):
        return 'done'
    reasons = []
    for path, info in zip(job.outputs, infos):
        if info == 'absent':
            reasons.append(f"'{path}' is missing (half of a pair)")
        elif info is None:
            reasons.append(f"'{path}' exists but was not written by prepare_data (no {INFO_FILE})")
        elif info.get('fingerprint') != want:
            reasons.append(f"'{path}' was built from other sources or settings ({info.get('fingerprint')})")
    return '; '.join(reasons)


def run_jobs(jobs: Sequence[Job], problems: Problems, force: bool = False, progress: bool = True) -> Dict[str, str]:
    """Check every job, then write the ones that are not up to date as one unit (see the module docstring).

    1. Check, all problems collected and raised as ONE ``ConfigError``: the layout (missing folders, unpaired
       names), every image header (PIL, no decoding), sizes within a pair and against the crop, the outputs already
       on disk (built from other sources or settings, or not by this tool: refused without ``force``), and a full
       decode of every image file whose header reads, with the write's decoder (``cv2.imread``). The decode pass
       runs even when other problems were found, so one run names them all; it is cheap next to the PNG encoding.
    2. Write: decode, crop, PNG-encode and store with basicsr's ``LmdbMaker`` (which writes ``meta_info.txt``) into
       hidden temporary folders ``.partial_<name>.lmdb`` beside each output.
    3. Commit: only when every job was written, the temporary folders are renamed to their final names (an output
       being rebuilt is first moved aside, then removed); any failure before that removes every temporary folder
       and every folder the run created.
    A job whose outputs carry the same fingerprint (``prepare_info.json``: job, crop settings, source names and
    sizes) is skipped. Returns {job name: 'written' | 'skipped'}."""
    for job in jobs:
        if not job.pairs and not problems.items:
            problems.add(f'[{job.name}] no image pairs found')
        check_pairs(job, problems)
    states = {job.name: job_state(job) for job in jobs}
    for job in jobs:
        state = states[job.name]
        if state not in ('done', 'absent') and not force:
            problems.add(f'[{job.name}] {state}; rerun with --force to rebuild it')
    todo = [job for job in jobs if force or states[job.name] != 'done']
    todo_names = {job.name for job in todo}
    decode_check(todo, problems, progress)
    problems.raise_if_any()
    for job in jobs:
        if job.name not in todo_names:
            print(f'[{job.name}] up to date: {job.gt_out}, {job.lq_out} (use --force to rebuild)', flush=True)
    written = write_jobs(todo, progress=progress) if todo else {}
    for job in todo:
        print(f'[{job.name}] wrote {written[job.name]} pairs: {job.gt_out}, {job.lq_out}', flush=True)
    return {job.name: 'written' if job.name in todo_names else 'skipped' for job in jobs}
