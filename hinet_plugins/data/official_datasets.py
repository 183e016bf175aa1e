"""The official dataset archives (as their authors ship them, unpacked under ``datasets/``) -> the LMDBs the
option files read. Each ``prepare_<dataset>`` function (layouts and outputs in its first comment) builds the
dataset's jobs and hands them to ``prepare.run_jobs`` (check everything, then write all jobs as one unit).

Decisions:
- Output paths are the ones the option files under ``options/`` use; each dataset's root defaults to
  ``datasets/<Name>``.
- Crops follow the releases' recipes (SIDD 512/384, GoPro 512/256 as HINet), except REDS, which HINet stored as
  whole frames: we store 512 crops with step 512, which makes each LMDB read cheaper for 256 patches.
- Several layouts are accepted where the releases' scripts and archives differ (e.g. GOPRO_Large scene folders or
  the flattened ``input``/``target`` folders of MPRNet/HINet); LMDBs written next to scene folders are recognised
  as outputs and never scanned as inputs.
"""
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .prepare import Job, Pair, Problems, lmdb_key, list_images, pair_folders, require_dir, run_jobs, sub_dirs

RAIN13K_TEST_SETS = ('Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200')


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


def sidd_train_pairs(data_dir: str, problems: Problems) -> List[Pair]:
    pairs = []
    scenes = sub_dirs(data_dir)
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


def sidd_val_pairs(root: str, problems: Problems) -> Tuple[List[Pair], List[str]]:
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


def prepare_sidd(root: str = 'datasets/SIDD', splits: Sequence[str] = ('train', 'val'), crop_size: int = 512,
                 step: int = 384, force: bool = False, progress: bool = True) -> Dict[str, str]:
    problems, jobs = Problems('SIDD'), []
    # HINet/NAFNet recipe: 512x512 crops, step 384. Training: ``train/SIDD_Medium_Srgb/Data`` (or the other
    # ``SIDD_DATA_DIRS``), one folder per scene of ``GT_SRGB_0NN.PNG`` / ``NOISY_SRGB_0NN.PNG`` pairs (captures 010
    # and 011 both used) -> ``train/{gt_crops,input_crops}.lmdb``, keys ``<scene>_<NNN>_sXXX``. Validation:
    # ``ValidationGtBlocksSrgb.mat`` / ``ValidationNoisyBlocksSrgb.mat`` (in ``val/`` or the root; 40x32 blocks of
    # 256x256x3 uint8 RGB) -> ``val/{gt_crops,input_crops}.lmdb``, keys ``<image>_<block>``.
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
def gopro_split_pairs(split_dir: str, blur_folder: str, problems: Problems) -> List[Pair]:
    """Flattened ``input``/``target`` folders, or GOPRO_Large's ``<scene>/{blur,sharp}``."""
    if not require_dir(split_dir, problems):
        return []
    if os.path.isdir(os.path.join(split_dir, 'input')) or os.path.isdir(os.path.join(split_dir, 'target')):
        ok = all([require_dir(os.path.join(split_dir, 'target'), problems, ' (flattened layout: input/ + target/)'),
                  require_dir(os.path.join(split_dir, 'input'), problems, ' (flattened layout: input/ + target/)')])
        return pair_folders(os.path.join(split_dir, 'target'), os.path.join(split_dir, 'input'), problems) if ok else []
    scenes = sub_dirs(split_dir)  # never the LMDBs written next to the scene folders
    if not scenes:
        problems.add(f"'{split_dir}' holds neither scene folders (<scene>/{blur_folder}, <scene>/sharp) nor "
                     'input/ + target/')
    pairs = []
    for scene in scenes:
        sharp, blur = os.path.join(split_dir, scene, 'sharp'), os.path.join(split_dir, scene, blur_folder)
        if all([require_dir(sharp, problems), require_dir(blur, problems)]):
            pairs += pair_folders(sharp, blur, problems, key_prefix=f'{scene}_')
    return pairs


def prepare_gopro(root: str = 'datasets/GoPro', splits: Sequence[str] = ('train', 'test'), crop_size: int = 512,
                  step: int = 256, blur_folder: str = 'blur', force: bool = False,
                  progress: bool = True) -> Dict[str, str]:
    problems, jobs = Problems('GoPro'), []
    # 512x512 crops, step 256, as the HINet release. ``{train,test}/<scene>/{blur,sharp}/*.png`` (GOPRO_Large;
    # ``blur_folder='blur_gamma'`` picks the gamma-blurred set) or the flattened MPRNet/HINet layout
    # ``{train,test}/{input,target}`` -> ``train/{sharp_crops,blur_crops}.lmdb`` and ``test/{target,input}.lmdb``
    # (full size); keys ``<scene>_<frame>``.
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


def reds_pairs(sharp_dir: str, blur_dir: str, problems: Problems, only_val300: bool = False) -> List[Pair]:
    sharp, blur = _reds_frames(sharp_dir, problems), _reds_frames(blur_dir, problems)
    if only_val300:  # HINet's REDS-val-300: frame numbers ending in 9
        sharp = {k: v for k, v in sharp.items() if k.endswith('9')}
        blur = {k: v for k, v in blur.items() if k.endswith('9')}
    if sharp and blur and set(sharp) != set(blur):
        only_s, only_b = sorted(set(sharp) - set(blur)), sorted(set(blur) - set(sharp))
        problems.add(f"unpaired frames between '{sharp_dir}' and '{blur_dir}': only sharp {only_s[:5]}, "
                     f'only blurred {only_b[:5]}')
    return [Pair(k, sharp[k], blur[k]) for k in sorted(sharp) if k in blur]


def prepare_reds(root: str = 'datasets/REDS', splits: Sequence[str] = ('train', 'val'), crop_size: int = 512,
                 step: int = 512, force: bool = False, progress: bool = True) -> Dict[str, str]:
    problems, jobs = Problems('REDS'), []
    # Deblurring track with JPEG-compressed blur, as HINet uses it. ``train/train_blur_jpeg/<clip>/<frame>.jpg`` +
    # ``train/train_sharp/<clip>/<frame>.png``, ``val/val_blur_jpeg`` + ``val/val_sharp`` (clip folders, or flattened
    # to ``<clip>_<frame>.ext`` by the HINet script) -> ``train/{sharp_crops,blur_crops}.lmdb`` (512 crops, step 512:
    # 6 per 720x1280 frame, rows 0/208, columns 0/512/768; a larger step than GoPro's, to limit the overlap of
    # 24,000 frames) and ``val/{sharp_300,blur_300}.lmdb``: HINet's "REDS-val-300", the frames whose number ends
    # in 9. Keys ``<clip>_<frame>``.
    if 'train' in splits:
        jobs.append(Job('REDS train', f'{root}/train/sharp_crops.lmdb', f'{root}/train/blur_crops.lmdb',
                        reds_pairs(f'{root}/train/train_sharp', f'{root}/train/train_blur_jpeg', problems),
                        crop=(crop_size, step)))
    if 'val' in splits:
        jobs.append(Job('REDS val-300', f'{root}/val/sharp_300.lmdb', f'{root}/val/blur_300.lmdb',
                        reds_pairs(f'{root}/val/val_sharp', f'{root}/val/val_blur_jpeg', problems, only_val300=True)))
    return run_jobs(jobs, problems, force, progress)


# ----------------------------------------------------------------------------------------------------- Rain13k
def prepare_rain13k(root: str = 'datasets/Rain13k', splits: Sequence[str] = ('train', 'test'),
                    test_sets: Sequence[str] = RAIN13K_TEST_SETS, force: bool = False,
                    progress: bool = True) -> Dict[str, str]:
    problems, jobs = Problems('Rain13k'), []
    # MPRNet's collection, full size, no crops: ``train/{input,target}`` and ``test/<set>/{input,target}`` (the sets
    # of ``RAIN13K_TEST_SETS``) -> ``train/{input,target}.lmdb`` and ``test/<set>/{input,target}.lmdb``.
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
