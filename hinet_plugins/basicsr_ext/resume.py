"""Exact resume: a resumed run trains on the same samples with the same augmentations as an uninterrupted one.

Upstream ``train_pipeline`` restarts the interrupted epoch from its first batch and re-applies the seeds, and a
sample's random draws depend on which DataLoader worker serves it. ``install()`` wraps three module globals of
``basicsr.train`` and ``EnlargedSampler.__iter__``: after a resume the sampler skips the batches already trained
and restores this rank's random states (``MultiStageRestorationModel`` saves every rank's); each training sample
is seeded from (``manual_seed``, epoch, position in the global permutation) by ``PositionSeeded``, so its draws
do not depend on workers or ranks. With several ranks (``_agreed``) rank 0 alone decides what to resume from and
sends the bytes of the state and network files (``utils.checkpoint.received``): nodes need no shared storage, and
an error on rank 0 stops every rank with the same line. Drop when upstream resumes mid-epoch and across nodes.
"""
import os
import random

import basicsr.train as _bsr_train
import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import check_resume
from torch.utils.data import Dataset

from ..errors import ConfigError, one_line
from ..utils.checkpoint import RECEIVED_FILES, set_rng_states
from .compat import read_training_state

_PENDING = {}


class SampleIndex(int):
    """A dataset index that also carries (seed, epoch, position) for ``PositionSeeded``; pickles to workers."""

    def __new__(cls, value, seed, epoch, position):
        obj = super().__new__(cls, value)
        obj.seed, obj.epoch, obj.position = seed, epoch, position
        return obj

    def __reduce__(self):
        return SampleIndex, (int(self), self.seed, self.epoch, self.position)


def _mixed(seed, epoch, position):
    """A 64-bit seed from (seed, epoch, position), well mixed (numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(position)]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


class PositionSeeded(Dataset):
    """The train dataset, with each sample's random draws seeded from its ``SampleIndex`` (module docstring).

    The global generators are restored after the sample, so the process's own random sequence (the main process
    with ``num_worker_per_gpu: 0``) is not disturbed. Attributes other than these are the wrapped dataset's."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        if not isinstance(index, SampleIndex):
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        seed = _mixed(index.seed, index.epoch, index.position)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            return self.dataset[int(index)]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def _seeding(build_dataloader):
    def build_dataloader_seeded(dataset, dataset_opt, num_gpu=1, dist=False, sampler=None, seed=None, **kwargs):
        if isinstance(sampler, EnlargedSampler) and dataset_opt.get('phase') == 'train':
            sampler.sample_seed = 0 if seed is None else seed
            dataset = PositionSeeded(dataset)
        return build_dataloader(dataset, dataset_opt, num_gpu=num_gpu, dist=dist, sampler=sampler, seed=seed,
                                **kwargs)
    build_dataloader_seeded.upstream = build_dataloader
    return build_dataloader_seeded


def _network_files(opt):
    """{path.pretrain_network_* key: its file} (after ``check_resume``: the resumed iteration's network files)."""
    return {key: value for key, value in opt['path'].items() if key.startswith('pretrain_network') and value}


def _read_bytes(path):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as err:
        raise ConfigError(f"'{path}' cannot be read: {err.strerror or err}") from None


def _agreed(load_resume_state):
    def load_on_rank0_and_share(opt):
        if not opt.get('dist') or opt.get('world_size', 1) < 2:
            return load_resume_state(opt)
        import torch.distributed as dist
        box = [None]
        if opt['rank'] == 0:
            try:
                state = load_resume_state(opt)  # sets path.resume_state and the network files (check_resume)
                path = opt['path'].get('resume_state') if state is not None else None
                box[0] = {'state_path': path, 'iter': state['iter'] if state else None,
                          'state': _read_bytes(path) if path else None,
                          'networks': {key: _read_bytes(file) for key, file in _network_files(opt).items()}}
            except ConfigError as err:
                box[0] = {'error': one_line(err)}
                dist.broadcast_object_list(box, src=0)
                raise
            dist.broadcast_object_list(box, src=0)
            return state
        dist.broadcast_object_list(box, src=0)
        sent = box[0]
        if 'error' in sent:
            raise ConfigError(f"rank 0 stopped: {sent['error']}")
        state = None
        if sent['state_path']:  # rank 0's file; the network paths become this rank's own (check_resume)
            opt['path']['resume_state'] = sent['state_path']
            state = read_training_state(sent['state_path'], source=sent['state'])
            check_resume(opt, sent['iter'])
        for key, data in sent['networks'].items():
            RECEIVED_FILES[os.path.abspath(opt['path'][key])] = data
        return state
    load_on_rank0_and_share.upstream = load_resume_state
    return load_on_rank0_and_share


def _remembering(load_resume_state):
    def load_and_remember(opt):
        state = load_resume_state(opt)
        if state is not None:
            _PENDING['state'] = state
        return state
    load_and_remember.upstream = load_resume_state
    return load_and_remember


def _resuming(create_loaders):
    def create_train_val_dataloader(opt, logger):
        """Upstream's loaders; after a resume, the train sampler continues the interrupted epoch."""
        result = create_loaders(opt, logger)
        state = _PENDING.pop('state', None)
        loader, sampler = result[0], result[1]
        if state is None or loader is None or not isinstance(sampler, EnlargedSampler):
            return result
        per_epoch = len(loader)
        done = state['iter'] - state['epoch'] * per_epoch
        rng = state.get('rng') or []
        plan = {'epoch': state['epoch'], 'skip': 0,
                'rng': rng[opt['rank']] if len(rng) == opt['world_size'] else None}
        if 0 <= done <= per_epoch:
            plan['skip'] = done * loader.batch_size
            logger.info(f"Resume inside epoch {state['epoch']}: skipping its {done} batch(es) already trained"
                        + ('' if plan['rng'] else ' (the state holds no random states: augmentations will differ)'))
        else:
            logger.warning(f"Resume: iteration {state['iter']} is not inside epoch {state['epoch']} at {per_epoch} "
                           'batches per epoch (batch size or dataset changed?); that epoch restarts from its start')
        sampler.resume_plan = plan
        return result
    create_train_val_dataloader.upstream = create_loaders
    return create_train_val_dataloader


_upstream_sampler_iter = EnlargedSampler.__iter__


def _sampler_iter(self):
    # The plan holds for every iterator of its epoch: basicsr's CPUPrefetcher makes one iterator before
    # ``set_epoch`` and another in ``reset()``, and a multi-worker iterator starts sampling when it is created.
    plan = self.__dict__.get('resume_plan')
    if plan is not None and self.epoch > plan['epoch']:  # that epoch is over
        del self.__dict__['resume_plan']
    indices = _upstream_sampler_iter(self)
    seed = getattr(self, 'sample_seed', None)
    if seed is not None:  # position in the epoch's global permutation: rank + k * num_replicas
        indices = iter([SampleIndex(v, seed, self.epoch, self.rank + k * self.num_replicas)
                        for k, v in enumerate(indices)])
    if plan is None or plan['epoch'] != self.epoch:
        return indices
    if plan['rng'] is not None:  # here, after the DataLoader iterator drew its base seed, as in the original run
        set_rng_states(plan['rng'])
    return iter(list(indices)[plan['skip']:])


def install() -> None:
    """Idempotent; ``basicsr_ext.install`` calls it after ``compat.install``."""
    if not hasattr(_bsr_train.load_resume_state, 'upstream'):
        _bsr_train.load_resume_state = _remembering(_agreed(_bsr_train.load_resume_state))
    if not hasattr(_bsr_train.create_train_val_dataloader, 'upstream'):
        _bsr_train.create_train_val_dataloader = _resuming(_bsr_train.create_train_val_dataloader)
    if not hasattr(_bsr_train.build_dataloader, 'upstream'):
        _bsr_train.build_dataloader = _seeding(_bsr_train.build_dataloader)
    EnlargedSampler.__iter__ = _sampler_iter
