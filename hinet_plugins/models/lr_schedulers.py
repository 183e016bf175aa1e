"""Learning-rate schedules that basicsr 1.4.2 lacks, under the names the authors' option files use.

- ``TrueCosineAnnealingLR``: the HINet/NAFNet releases' name for torch's ``CosineAnnealingLR`` (``T_max``,
  ``eta_min``).
- ``CosineAnnealingRestartCyclicLR`` (Restormer's files): consecutive cosine periods ``periods``, each from the
  base lr times ``restart_weights[i]`` down to ``eta_mins[i]``. At iteration ``t`` the period is the first whose
  cumulative end is >= ``t``; within it ``lr = eta_min + w * (base - eta_min) * (1 + cos(pi * (t - start) /
  period)) / 2``. Restormer's recipe, periods [92000, 208000] with eta_mins [3e-4, 1e-6] from 3e-4, is a flat
  3e-4 for 92k iterations, then a cosine to 1e-6. Past the last period the lr stays at that period's end.
"""
import math
from typing import List, Sequence

import torch
from basicsr.models import lr_scheduler as bsr_lr_scheduler

from ..errors import ConfigError


class CosineAnnealingRestartCyclicLR(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, optimizer: torch.optim.Optimizer, periods: Sequence[int],
                 restart_weights: Sequence[float] = (1,), eta_mins: Sequence[float] = (0,),
                 last_epoch: int = -1) -> None:
        self.periods = [int(p) for p in periods]
        self.restart_weights = list(restart_weights)
        self.eta_mins = list(eta_mins)
        if not self.periods or min(self.periods) <= 0:
            raise ConfigError(f'train.scheduler.periods must be positive integers, got {list(periods)}')
        for key, values in (('restart_weights', self.restart_weights), ('eta_mins', self.eta_mins)):
            if len(values) != len(self.periods):
                raise ConfigError(f'train.scheduler.{key} needs one entry per period ({len(self.periods)}), got '
                                  f'{values}')
        self.ends = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        t = self.last_epoch
        i = next((i for i, end in enumerate(self.ends) if t <= end), len(self.ends) - 1)
        start, period = self.ends[i] - self.periods[i], self.periods[i]
        frac = min(max(t - start, 0) / period, 1.0)
        weight, eta_min = self.restart_weights[i], self.eta_mins[i]
        return [eta_min + weight * 0.5 * (base - eta_min) * (1 + math.cos(math.pi * frac)) for base in self.base_lrs]


SCHEDULERS = {
    'MultiStepLR': bsr_lr_scheduler.MultiStepRestartLR,
    'MultiStepRestartLR': bsr_lr_scheduler.MultiStepRestartLR,
    'CosineAnnealingRestartLR': bsr_lr_scheduler.CosineAnnealingRestartLR,
    'TrueCosineAnnealingLR': torch.optim.lr_scheduler.CosineAnnealingLR,
    'CosineAnnealingLR': torch.optim.lr_scheduler.CosineAnnealingLR,
    'CosineAnnealingRestartCyclicLR': CosineAnnealingRestartCyclicLR,
}


def build_scheduler(optimizer: torch.optim.Optimizer, sched_opt: dict) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.scheduler`` -> scheduler; unknown type or arguments -> ConfigError naming the key."""
    sched_opt = dict(sched_opt)
    sched_type = sched_opt.pop('type', None)
    if sched_type not in SCHEDULERS:
        raise ConfigError(f"train.scheduler.type: unknown scheduler '{sched_type}', choose from "
                          + ', '.join(SCHEDULERS))
    try:
        return SCHEDULERS[sched_type](optimizer, **sched_opt)
    except TypeError as err:
        raise ConfigError(f'train.scheduler ({sched_type}): {err}') from None
