"""Dataset preparation behind ``scripts/prepare_data.py``: official archive layouts -> BasicSR LMDBs.

Each dataset function (``prepare_sidd``, ``prepare_gopro``, ``prepare_reds``, ``prepare_rain13k``) works in two
phases. (1) *Check*: find the layout of the archive as the user unpacked it, pair the images by name and read
every image header (PIL, no decoding); every problem found (missing folder, unpaired names, unreadable header,
sizes that differ within a pair, images smaller than the crop) is collected and raised as ONE ``ConfigError``
before anything is written. (2) *Write*: decode, crop, PNG-encode and store with basicsr's ``LmdbMaker`` (which
writes ``meta_info.txt``) into hidden temporary ``.lmdb`` folders, which are renamed to their final names only
when every image of the job was written. A decode error in phase 2 removes the temporary folders, so a partial
LMDB never appears under the final name.

Idempotence: each finished LMDB carries ``prepare_info.json`` (dataset, crop settings, and a fingerprint of the
source file names and sizes). Re-running with the same sources and settings skips the job; anything else already
at an output path (another build, a half pair, foreign data) is an error unless ``force=True``, which removes it
and rebuilds. LMDB keys are file stems with every character outside ``[A-Za-z0-9_-]`` replaced by ``_`` (a '.'
would break basicsr's ``meta_info.txt`` parsing); crops get the suffix ``_s001``, ``_s002``, ... in raster order.

Layouts (paths relative to the dataset root, default ``datasets/<Name>``) and outputs (the paths the option
files use):

- SIDD (HINet/NAFNet recipe: 512x512 crops, step 384). Training data: ``train/SIDD_Medium_Srgb/Data`` (also
  found at ``SIDD_Medium_Srgb/Data`` or ``Data``), one folder per scene holding ``GT_SRGB_0NN.PNG`` /
  ``NOISY_SRGB_0NN.PNG`` pairs (both captures 010 and 011 are used). Validation: ``ValidationGtBlocksSrgb.mat``
  and ``ValidationNoisyBlocksSrgb.mat`` (in ``val/`` or the root; 40x32 blocks of 256x256x3 uint8 RGB).
  -> ``train/{gt_crops,input_crops}.lmdb``, ``val/{gt_crops,input_crops}.lmdb`` (keys ``<scene>_<NNN>_sXXX``,
  ``<image>_<block>``).
- GoPro (512x512 crops, step 256, as the HINet release). ``{train,test}/<scene>/{blur,sharp}/*.png`` (GOPRO_Large;
  ``--blur-folder blur_gamma`` picks the gamma-blurred set) or the flattened MPRNet/HINet layout
  ``{train,test}/{input,target}``. -> ``train/{sharp_crops,blur_crops}.lmdb``, ``test/{target,input}.lmdb``
  (full size). Keys ``<scene>_<frame>``.
- REDS (deblurring track with JPEG-compressed blur, as HINet uses it). ``train/train_blur_jpeg/<clip>/<frame>.jpg``
  + ``train/train_sharp/<clip>/<frame>.png`` and ``val/val_blur_jpeg`` + ``val/val_sharp`` (clip folders, or the
  folders already flattened to ``<clip>_<frame>.ext`` by the HINet script). -> ``train/{sharp_crops,blur_crops}
  .lmdb`` and ``val/{sharp_300,blur_300}.lmdb``. Training crops: 512x512, step 512 (6 per 720x1280 frame, rows
  0/208, columns 0/512/768): the HINet release stored whole frames; crops make each LMDB read ~3.5x cheaper for
  256 patches, and the larger step than GoPro's keeps the 24,000 frames at ~1.7x their area. Validation: HINet's
  "REDS-val-300", the frames whose number ends in 9 (10 of the 100 frames of each of the 30 validation clips).
  Keys ``<clip>_<frame>``.
- Rain13k (MPRNet's collection, full size, no crops). ``train/{input,target}`` and
  ``test/<Test100|Rain100H|Rain100L|Test2800|Test1200>/{input,target}`` -> ``train/{input,target}.lmdb`` and
  ``test/<Set>/{input,target}.lmdb``.
"""
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import cv2
import numpy as np
from basicsr.utils import scandir
from basicsr.utils.lmdb_util import LmdbMaker

from ..errors import ConfigError
from ..options_check import IMG_EXTS, image_header
from ..utils.tiling import tile_origins

INFO_FILE = 'prepare_info.json'
MAX_LISTED = 12  # problems listed in one error message
RAIN13K_TEST_SETS = ('Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200')


def lmdb_key(name):
    """An LMDB key from a file stem or composed name: ASCII letters, digits, '_' and '-' only (no '.')."""
    return re.sub(r'[^A-Za-z0-9_-]', '_', name)


def list_images(folder, recursive=False):
    """{relative path without extension: full path} of the images in ``folder`` (any case of extension)."""
    return {os.path.splitext(rel)[0]: os.path.join(folder, rel)
            for rel in sorted(scandir(folder, recursive=recursive)) if rel.lower().endswith(IMG_EXTS)}


@dataclass
class Pair:
    key: str
    gt: object  # image path, or an HxWx3 uint8 BGR array
    lq: object


@dataclass
class Job:
    """One GT/LQ pair of output LMDBs and the image pairs that go in (cropped when ``crop`` = (size, step))."""
    name: str
    gt_out: str
    lq_out: str
    pairs: list
    crop: tuple = None
    shapes: dict = field(default_factory=dict)  # key -> (h, w) of both images, filled by check_pairs

    source_files: tuple = ()  # files the pairs come from when they are arrays (SIDD's .mat)

    def fingerprint(self):
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
    """Collects layout problems so the user sees all of them at once."""

    def __init__(self, dataset):
        self.dataset, self.items = dataset, []

    def add(self, message):
        self.items.append(message)

    def raise_if_any(self):
        if self.items:
            more = f'\n  ... and {len(self.items) - MAX_LISTED} more' if len(self.items) > MAX_LISTED else ''
            lines = '\n'.join(f'  - {m}' for m in self.items[:MAX_LISTED])
            raise ConfigError(f'{self.dataset}: the dataset layout has {len(self.items)} problem(s), nothing was '
                              f'written:\n{lines}{more}')


def require_dir(path, problems, hint=''):
    if not os.path.isdir(path):
        problems.add(f"folder '{path}' is missing{hint}")
        return False
    return True


def pair_folders(gt_dir, lq_dir, problems, key_prefix='', recursive=False):
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


def check_pairs(job, problems):
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
                sizes.append(src.shape[:2])
        if len(sizes) < 2:
            continue
        if sizes[0] != sizes[1]:
            problems.add(f"pair '{p.key}': sizes differ, {_src(p.gt)} is {sizes[0][0]}x{sizes[0][1]} but "
                         f'{_src(p.lq)} is {sizes[1][0]}x{sizes[1][1]}')
        elif job.crop and min(sizes[0]) < job.crop[0]:
            problems.add(f"pair '{p.key}': {_src(p.gt)} is {sizes[0][0]}x{sizes[0][1]}, smaller than the crop size "
                         f'{job.crop[0]} (lower --crop-size)')
        job.shapes[p.key] = sizes[0]


def _src(src):
    return f"'{src}'" if isinstance(src, str) else 'the array'


def _read_bgr(src):
    if not isinstance(src, str):
        return src
    img = cv2.imread(src, cv2.IMREAD_COLOR)  # what basicsr's LMDB reader decodes to: 8-bit, 3 channels
    if img is None:
        raise ConfigError(f"image '{src}' cannot be decoded (the header was readable; the file may be truncated)")
    return img


def _records(job):
    """(key, gt crop, lq crop) for every crop of every pair (whole images when the job does not crop)."""
    for p in job.pairs:
        gt, lq = _read_bgr(p.gt), _read_bgr(p.lq)
        if gt.shape != lq.shape:
            raise ConfigError(f"pair '{p.key}': decoded sizes differ, {gt.shape} vs {lq.shape}")
        if not job.crop:
            yield p.key, gt, lq
            continue
        size, step = job.crop
        index = 0
        for y in tile_origins(gt.shape[0], size, step):
            for x in tile_origins(gt.shape[1], size, step):
                index += 1
                yield f'{p.key}_s{index:03d}', gt[y:y + size, x:x + size], lq[y:y + size, x:x + size]


def count_records(job):
    if not job.crop:
        return len(job.pairs)
    size, step = job.crop
    return sum(len(tile_origins(h, size, step)) * len(tile_origins(w, size, step)) for h, w in job.shapes.values())


def _read_info(lmdb_path):
    try:
        with open(os.path.join(lmdb_path, INFO_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def job_state(job):
    """'done' (both outputs built from these sources with these settings), 'absent' or a reason it is neither."""
    infos = [_read_info(p) if os.path.exists(p) else 'absent' for p in (job.gt_out, job.lq_out)]
    if infos == ['absent', 'absent']:
        return 'absent'
    want = job.fingerprint()
    if all(isinstance(i, dict) and i.get('fingerprint') == want for i in infos):
        return 'done'
    reasons = []
    for path, info in zip((job.gt_out, job.lq_out), infos):
        if info == 'absent':
            reasons.append(f"'{path}' is missing (half of a pair)")
        elif info is None:
            reasons.append(f"'{path}' exists but was not written by prepare_data (no {INFO_FILE})")
        elif info.get('fingerprint') != want:
            reasons.append(f"'{path}' was built from other sources or settings ({info.get('fingerprint')})")
    return '; '.join(reasons)


def write_job(job, force=False, compress_level=1, progress=True):
    """Write the two LMDBs of ``job`` (see the module docstring). Returns 'written' or 'skipped'."""
    from tqdm import tqdm
    state = job_state(job)
    if state == 'done' and not force:
        print(f'[{job.name}] up to date: {job.gt_out}, {job.lq_out} (use --force to rebuild)')
        return 'skipped'
    if state not in ('done', 'absent') and not force:
        raise ConfigError(f'[{job.name}] {state}; rerun with --force to rebuild it')
    total = count_records(job)
    raw = sum(h * w * 3 for h, w in job.shapes.values())
    if job.crop:
        raw = total * job.crop[0] * job.crop[0] * 3
    map_size = int(raw * 1.2) + (64 << 20)
    temps, makers = [], []
    try:
        for out in (job.gt_out, job.lq_out):
            folder = os.path.dirname(os.path.abspath(out))
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, '.partial_' + os.path.basename(out))
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            temps.append(tmp)
            makers.append(LmdbMaker(tmp, map_size=map_size, batch=1000, compress_level=compress_level))
        params = [cv2.IMWRITE_PNG_COMPRESSION, compress_level]
        bar = tqdm(total=total, unit='img', desc=job.name, disable=not progress)
        for key, *imgs in _records(job):
            for maker, img in zip(makers, imgs):
                ok, buf = cv2.imencode('.png', np.ascontiguousarray(img), params)
                if not ok:
                    raise ConfigError(f"[{job.name}] cannot PNG-encode '{key}'")
                maker.put(buf.tobytes(), key, img.shape)
            bar.update(1)
        bar.close()
        for maker in makers:
            maker.close()
        makers = []
        info = {'fingerprint': job.fingerprint(), 'records': total}
        for tmp in temps:
            with open(os.path.join(tmp, INFO_FILE), 'w') as f:
                json.dump(info, f, indent=1)
        for tmp, out in zip(temps, (job.gt_out, job.lq_out)):
            if os.path.exists(out):
                shutil.rmtree(out)
            os.replace(tmp, out)
    finally:
        for maker in makers:
            try:
                maker.close()
            except Exception:  # noqa: BLE001  (best effort before removing the temporary folder)
                pass
        for tmp in temps:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
    print(f'[{job.name}] wrote {total} pairs: {job.gt_out}, {job.lq_out}')
    return 'written'


def run_jobs(jobs, problems, force=False, progress=True):
    """Check every job (all problems at once), then write them; returns {job name: 'written'|'skipped'}."""
    for job in jobs:
        if not job.pairs and not problems.items:
            problems.add(f'[{job.name}] no image pairs found')
        check_pairs(job, problems)
    problems.raise_if_any()
    return {job.name: write_job(job, force=force, progress=progress) for job in jobs}


def _first_dir(root, candidates, problems, what):
    for rel in candidates:
        if os.path.isdir(os.path.join(root, rel)):
            return os.path.join(root, rel)
    tried = ', '.join(f"'{os.path.join(root, rel)}'" for rel in candidates)
    problems.add(f'{what}: none of {tried} exists')
    return None


def _first_file(root, candidates):
    for rel in candidates:
        if os.path.isfile(os.path.join(root, rel)):
            return os.path.join(root, rel)
    return None


# ----------------------------------------------------------------------------------------------------- SIDD
SIDD_DATA_DIRS = ('train/SIDD_Medium_Srgb/Data', 'SIDD_Medium_Srgb/Data', 'Data', 'train/Data')
_SIDD_NAME = re.compile(r'^(GT|NOISY)_SRGB_(\d+)\.png$', re.IGNORECASE)


def sidd_train_pairs(data_dir, problems):
    pairs = []
    scenes = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
    if not scenes:
        problems.add(f"'{data_dir}' holds no scene folders (expected e.g. 0001_001_S6_00100_00060_3200_L/)")
    for scene in scenes:
        files = {}
        for name in os.listdir(os.path.join(data_dir, scene)):
            m = _SIDD_NAME.match(name)
            if m:
                files.setdefault(m.group(2), {})[m.group(1).upper()] = os.path.join(data_dir, scene, name)
        if not files:
            problems.add(f"scene '{os.path.join(data_dir, scene)}' has no GT_SRGB_*.PNG / NOISY_SRGB_*.PNG images")
        for num, kinds in sorted(files.items()):
            if set(kinds) != {'GT', 'NOISY'}:
                have = next(iter(kinds))
                miss = 'NOISY' if have == 'GT' else 'GT'
                problems.add(f"'{kinds[have]}' has no partner {miss}_SRGB_{num}.PNG")
                continue
            pairs.append(Pair(lmdb_key(f'{scene}_{num}'), kinds['GT'], kinds['NOISY']))
    return pairs


def sidd_val_pairs(root, problems):
    """(pairs, .mat paths): one pair per 256x256 block of the validation .mat files (RGB -> BGR)."""
    import scipy.io
    arrays, paths = {}, []
    for kind, var in (('gt', 'ValidationGtBlocksSrgb'), ('lq', 'ValidationNoisyBlocksSrgb')):
        path = _first_file(root, (f'val/{var}.mat', f'{var}.mat'))
        if path is None:
            problems.add(f"'{var}.mat' is missing: looked in '{os.path.join(root, 'val')}' and '{root}'")
            continue
        try:
            mat = scipy.io.loadmat(path)
        except Exception as err:  # noqa: BLE001
            problems.add(f"'{path}' cannot be read as a MATLAB file: {err}")
            continue
        if var not in mat:
            found = sorted(k for k in mat if not k.startswith('__'))
            problems.add(f"'{path}' has no variable '{var}' (found: {found})")
            continue
        arr = mat[var]
        if arr.ndim != 5 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            problems.add(f"'{path}': '{var}' should be uint8 images x blocks x H x W x 3, got {arr.dtype} "
                         f'{arr.shape}')
            continue
        arrays[kind] = arr
        paths.append(path)
    if len(arrays) < 2:
        return [], paths
    gt, lq = arrays['gt'], arrays['lq']
    if gt.shape != lq.shape:
        problems.add(f'SIDD validation blocks differ in shape: GT {gt.shape} vs noisy {lq.shape}')
        return [], paths
    bgr = lambda a: np.ascontiguousarray(a[..., ::-1])  # noqa: E731
    return [Pair(f'{i:02d}_{j:02d}', bgr(gt[i, j]), bgr(lq[i, j]))
            for i in range(gt.shape[0]) for j in range(gt.shape[1])], paths


def prepare_sidd(root='datasets/SIDD', splits=('train', 'val'), crop_size=512, step=384, force=False, progress=True):
    problems, jobs = Problems('SIDD'), []
    if 'train' in splits:
        data_dir = _first_dir(root, SIDD_DATA_DIRS, problems, 'SIDD Medium sRGB training data (the Data folder)')
        pairs = sidd_train_pairs(data_dir, problems) if data_dir else []
        jobs.append(Job('SIDD train', f'{root}/train/gt_crops.lmdb', f'{root}/train/input_crops.lmdb', pairs,
                        crop=(crop_size, step)))
    if 'val' in splits:
        pairs, mats = sidd_val_pairs(root, problems)
        jobs.append(Job('SIDD val', f'{root}/val/gt_crops.lmdb', f'{root}/val/input_crops.lmdb', pairs,
                        source_files=tuple(mats)))
    return run_jobs(jobs, problems, force, progress)


# ----------------------------------------------------------------------------------------------------- GoPro
def gopro_split_pairs(split_dir, blur_folder, problems):
    """Flattened ``input``/``target`` folders, or GOPRO_Large's ``<scene>/{blur,sharp}``."""
    if not require_dir(split_dir, problems):
        return []
    if os.path.isdir(os.path.join(split_dir, 'input')) or os.path.isdir(os.path.join(split_dir, 'target')):
        ok = all([require_dir(os.path.join(split_dir, 'target'), problems, ' (flattened layout: input/ + target/)'),
                  require_dir(os.path.join(split_dir, 'input'), problems, ' (flattened layout: input/ + target/)')])
        return pair_folders(os.path.join(split_dir, 'target'), os.path.join(split_dir, 'input'), problems) if ok else []
    scenes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not scenes:
        problems.add(f"'{split_dir}' holds neither scene folders (<scene>/{blur_folder}, <scene>/sharp) nor "
                     'input/ + target/')
    pairs = []
    for scene in scenes:
        sharp, blur = os.path.join(split_dir, scene, 'sharp'), os.path.join(split_dir, scene, blur_folder)
        if all([require_dir(sharp, problems), require_dir(blur, problems)]):
            pairs += pair_folders(sharp, blur, problems, key_prefix=f'{scene}_')
    return pairs


def prepare_gopro(root='datasets/GoPro', splits=('train', 'test'), crop_size=512, step=256, blur_folder='blur',
                  force=False, progress=True):
    problems, jobs = Problems('GoPro'), []
    if 'train' in splits:
        jobs.append(Job('GoPro train', f'{root}/train/sharp_crops.lmdb', f'{root}/train/blur_crops.lmdb',
                        gopro_split_pairs(f'{root}/train', blur_folder, problems), crop=(crop_size, step)))
    if 'test' in splits:
        jobs.append(Job('GoPro test', f'{root}/test/target.lmdb', f'{root}/test/input.lmdb',
                        gopro_split_pairs(f'{root}/test', blur_folder, problems)))
    return run_jobs(jobs, problems, force, progress)


# ----------------------------------------------------------------------------------------------------- REDS
def _reds_frames(folder, problems):
    """{'<clip>_<frame>': path} from clip folders (REDS archive) or flattened '<clip>_<frame>.ext' files."""
    if not require_dir(folder, problems):
        return {}
    frames = {lmdb_key(rel.replace(os.sep, '_')): path for rel, path in list_images(folder, recursive=True).items()}
    if not frames:
        problems.add(f"'{folder}' holds no images (expected <clip>/<frame>.png|jpg)")
    return frames


def reds_pairs(sharp_dir, blur_dir, problems, only_val300=False):
    sharp, blur = _reds_frames(sharp_dir, problems), _reds_frames(blur_dir, problems)
    if only_val300:  # HINet's REDS-val-300: frame numbers ending in 9
        sharp = {k: v for k, v in sharp.items() if k.endswith('9')}
        blur = {k: v for k, v in blur.items() if k.endswith('9')}
    if sharp and blur and set(sharp) != set(blur):
        only_s, only_b = sorted(set(sharp) - set(blur)), sorted(set(blur) - set(sharp))
        problems.add(f"unpaired frames between '{sharp_dir}' and '{blur_dir}': only sharp {only_s[:5]}, "
                     f'only blurred {only_b[:5]}')
    return [Pair(k, sharp[k], blur[k]) for k in sorted(sharp) if k in blur]


def prepare_reds(root='datasets/REDS', splits=('train', 'val'), crop_size=512, step=512, force=False, progress=True):
    problems, jobs = Problems('REDS'), []
    if 'train' in splits:
        jobs.append(Job('REDS train', f'{root}/train/sharp_crops.lmdb', f'{root}/train/blur_crops.lmdb',
                        reds_pairs(f'{root}/train/train_sharp', f'{root}/train/train_blur_jpeg', problems),
                        crop=(crop_size, step)))
    if 'val' in splits:
        jobs.append(Job('REDS val-300', f'{root}/val/sharp_300.lmdb', f'{root}/val/blur_300.lmdb',
                        reds_pairs(f'{root}/val/val_sharp', f'{root}/val/val_blur_jpeg', problems, only_val300=True)))
    return run_jobs(jobs, problems, force, progress)


# ----------------------------------------------------------------------------------------------------- Rain13k
def prepare_rain13k(root='datasets/Rain13k', splits=('train', 'test'), test_sets=RAIN13K_TEST_SETS, force=False,
                    progress=True):
    problems, jobs = Problems('Rain13k'), []
    folders = ([('train', 'Rain13k train', f'{root}/train')] if 'train' in splits else []) + \
        ([(s, f'Rain13k {s}', f'{root}/test/{s}') for s in test_sets] if 'test' in splits else [])
    for _, name, folder in folders:
        pairs = []
        if require_dir(folder, problems) and all([require_dir(f'{folder}/target', problems),
                                                  require_dir(f'{folder}/input', problems)]):
            pairs = pair_folders(f'{folder}/target', f'{folder}/input', problems)
        jobs.append(Job(name, f'{folder}/target.lmdb', f'{folder}/input.lmdb', pairs))
    return run_jobs(jobs, problems, force, progress)


DATASETS = {'sidd': prepare_sidd, 'gopro': prepare_gopro, 'reds': prepare_reds, 'rain13k': prepare_rain13k}
