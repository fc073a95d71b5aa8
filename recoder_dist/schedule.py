"""How fast training moves and when it stops: the learning-rate schedule (``train.lr_schedule``),
the variational model's KL annealing (``train.kl_max``, ``train.kl_anneal_steps``) and early
stopping on validation NDCG@100 (``train.patience``), pure functions of the epoch or step and the
run's history, so that a resumed run continues them from its checkpoint alone.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from recoder_dist.config import TrainConfig
from recoder_dist.metrics import SELECTION_METRIC

SCHEDULES = ("step", "warmup_cosine")  # train.lr_schedule

def lr_factor(t: TrainConfig, epoch: int) -> float:
    """The multiple of ``train.lr`` used during the 0-based ``epoch`` of ``t.epochs``.

    ``step``: ``gamma`` to the number of ``milestones`` already passed (Recoder's MultiStepLR:
    milestone m lowers the rate from 0-based epoch m on). ``warmup_cosine``: a linear warm-up
    over ``warmup_epochs`` (1/W, 2/W, … 1), then a half cosine from 1 down to ``lr_floor`` over
    the remaining epochs (1 in the first of them, ``lr_floor`` after the last)."""
    if t.lr_schedule == "step":
        return t.gamma ** sum(1 for m in t.milestones if epoch >= m)
    if t.lr_schedule == "warmup_cosine":
        if epoch < t.warmup_epochs:
            return (epoch + 1) / t.warmup_epochs
        decay = max(1, t.epochs - t.warmup_epochs)
        progress = min(1.0, (epoch - t.warmup_epochs) / decay)
        return t.lr_floor + (1.0 - t.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.lr_schedule must be one of {', '.join(SCHEDULES)}, got {t.lr_schedule!r}")


def kl_weight(t: TrainConfig, step: int) -> float:
    """The KL term's weight β at the 0-based global ``step`` (Liang et al. 2018's annealing):
    ``kl_max · min(1, step / kl_anneal_steps)``, 0 at the first step, ``kl_max`` from
    ``kl_anneal_steps`` on (from the start when it is 0)."""
    if t.kl_anneal_steps <= 0:
        return t.kl_max
    return t.kl_max * min(1.0, step / t.kl_anneal_steps)


def lr_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``optimizer``'s schedule of ``t``, stepped once per epoch (its state is the epoch count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(t, epoch))


def evaluations_since_best(history: Sequence[dict], best_epoch: int) -> int:
    """Validation evaluations in ``history`` (records holding the validation selection metric) after
    ``best_epoch``."""
    return sum(1 for record in history if f"val_{SELECTION_METRIC}" in record and record["epoch"] > best_epoch)


def should_stop(history: Sequence[dict], best_epoch: int, patience: int) -> bool:
    """Early stopping: ``patience`` evaluations have passed without a better validation NDCG@100
    than the best epoch's (never with ``patience`` 0)."""
    return patience > 0 and evaluations_since_best(history, best_epoch) >= patience
