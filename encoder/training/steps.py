"""The optimisation step loop both trainings share (glue training and encoder pretraining).

:func:`run_steps` owns what every step does the same way: the progress bar, the step counter, the
finite-loss check, gradient clipping, the optimizer and schedule steps. What differs between the two
trainings stays with them: ``compute_loss(step)`` draws the step's data and runs forward and
backward (micro-batches and gradient accumulation included) and returns the step's loss; ``after_step``
logs, checkpoints and validates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def run_steps(
    *,
    start: int,
    max_steps: int,
    compute_loss: Callable[[int], tuple[float, dict]],
    optimizer: torch.optim.Optimizer,
    scheduler,
    parameters: Sequence[torch.nn.Parameter],
    accelerator,
    max_grad_norm: float | None = None,
    after_step: Callable[[int, float, float, dict], None] | None = None,
    title: str = "train",
    progress: bool = True,
    checkpoint_dir=None,
) -> None:
    """Optimizer steps ``start + 1 .. max_steps``.

    compute_loss(step) -> (loss, values): the step's loss as a float (after its backward pass) and
        extra metrics. A loss that is not finite raises FloatingPointError before the update (the last
        good checkpoint, in ``checkpoint_dir``, is kept).
    after_step(step, loss, lr, values): called after the update, with the learning rate it used.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=min(start, max_steps), desc=title, unit="step", disable=not progress)
    try:
        for step in range(start + 1, max_steps + 1):
            loss, values = compute_loss(step)
            if not math.isfinite(loss):
                kept = f"; the last good checkpoint is kept in {checkpoint_dir}" if checkpoint_dir is not None else ""
                raise FloatingPointError(f"{title}: the loss is {loss} at step {step}{kept}")
            if max_grad_norm is not None:
                accelerator.clip_grad_norm_(parameters, max_grad_norm)
            learning_rate = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{learning_rate:.2e}")
            if after_step is not None:
                after_step(step, loss, learning_rate, values)
    finally:
        bar.close()
