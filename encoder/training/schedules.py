"""Learning-rate schedules as ``torch.optim.lr_scheduler.LambdaLR`` factories.

Multipliers of each parameter group's base lr, as a function of the number of optimizer steps
already taken ``s`` (the lr used by update ``s + 1``):

- warm-up, ``s < warmup_steps``: ``(s + 1) / warmup_steps`` -- rises linearly, reaching the peak at
  the last warm-up update (the first update does not get lr 0);
- then decay over ``warmup_steps <= s <= total_steps``, with ``p = (s - warmup_steps) / (total_steps - warmup_steps)``:
  linear ``1 - (1 - final_ratio) * p`` or cosine ``r + (1 - r) * (1 + cos(pi * p)) / 2``;
- after ``total_steps`` the final value is kept.

The lambdas are plain closures, so ``LambdaLR.state_dict()`` stores no function state and
checkpoints (see ``encoder.training.checkpoints``) hold only numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def _check(warmup_steps: int, total_steps: int) -> None:
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps} and {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) is larger than total_steps ({total_steps})")


def _warmup_then(warmup_steps: int, total_steps: int, decay: Callable[[float], float]) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps == warmup_steps:
            return decay(1.0)
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return decay(progress)

    return multiplier


def linear_warmup_decay_multiplier(
    warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> Callable[[int], float]:
    """The multiplier function of :func:`warmup_linear_decay` (step -> factor)."""
    _check(warmup_steps, total_steps)
    return _warmup_then(warmup_steps, total_steps, lambda p: 1.0 - (1.0 - final_ratio) * p)


def cosine_warmup_decay_multiplier(
    warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> Callable[[int], float]:
    """The multiplier function of :func:`warmup_cosine_decay` with ``final_ratio = min_lr / base_lr``."""
    _check(warmup_steps, total_steps)
    return _warmup_then(
        warmup_steps, total_steps, lambda p: final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    )


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up to the base lr, then linear decay to ``final_ratio * base lr`` at ``total_steps``."""
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")
    return LambdaLR(optimizer, linear_warmup_decay_multiplier(warmup_steps, total_steps, final_ratio))


def warmup_cosine_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float
) -> LambdaLR:
    """Linear warm-up to the base lr, then cosine decay to the absolute ``min_lr`` at ``total_steps``
    (per parameter group: its multiplier floor is ``min_lr / group base lr``)."""
    lambdas = []
    for group in optimizer.param_groups:
        base = float(group.get("initial_lr", group["lr"]))
        if base <= 0 or not 0.0 <= min_lr <= base:
            raise ValueError(f"min_lr must be in [0, base lr = {base}], got {min_lr}")
        lambdas.append(cosine_warmup_decay_multiplier(warmup_steps, total_steps, min_lr / base))
    return LambdaLR(optimizer, lambdas)
