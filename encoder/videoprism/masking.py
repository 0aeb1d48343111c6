"""Token masks for VideoPrism pretraining: tube masking and BEVT block masking.

Both masks are 2-D masks over the N = h * w spatial patch positions of one frame, repeated in every
frame (a "tube" through time), as VideoPrism uses them: stage 1 drops 50% of the video tokens by
tube masking (random positions), stage 2 masks 65% by BEVT masking (BEiT's block-wise masks of
random size and aspect ratio, applied to every frame as in BEVT).

A mask is a boolean tensor ``[B, N]`` (True = masked). Every row masks exactly
``num_masked_positions(N, ratio)`` positions, so the visible positions of a batch stack into a
``[B, K]`` index tensor (``visible_indices``), which is what the masked encoder forward
(``encoder.videoprism.factorized.encode_visible_tokens``) takes. Masks are drawn from a NumPy generator, so a
seed (or a generator) reproduces them exactly on any machine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MASK_KINDS = ("tube", "block")


def _generator(rng: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _check_grid(grid_shape: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in grid_shape)
    if height < 1 or width < 1:
        raise ValueError(f"patch grid must be at least 1 x 1, got {grid_shape}")
    return height, width


def num_masked_positions(num_positions: int, mask_ratio: float) -> int:
    """Positions masked out of ``num_positions`` at ``mask_ratio`` (rounded; at least one stays visible)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    return min(int(round(mask_ratio * num_positions)), num_positions - 1)


def tube_mask(
    batch_size: int,
    grid_shape: tuple[int, int],
    mask_ratio: float,
    rng: int | np.random.Generator | None = None,
) -> torch.Tensor:
    """Random tube masks: each row masks a uniformly random set of spatial positions.

    grid_shape: (h, w) patches per frame. Returns bool ``[batch_size, h*w]``, True = masked, with
    exactly ``num_masked_positions(h*w, mask_ratio)`` True per row.
    """
    height, width = _check_grid(grid_shape)
    generator = _generator(rng)
    num_positions = height * width
    count = num_masked_positions(num_positions, mask_ratio)
    mask = np.zeros((batch_size, num_positions), dtype=bool)
    for row in range(batch_size):
        mask[row, generator.permutation(num_positions)[:count]] = True
    return torch.from_numpy(mask)


def _block_mask_one(
    height: int,
    width: int,
    count: int,
    generator: np.random.Generator,
    min_block_positions: int,
    log_aspect_range: tuple[float, float],
    max_attempts: int,
) -> np.ndarray:
    """BEiT's ``MaskingGenerator`` for one [height, width] mask, topped up to exactly ``count``."""
    mask = np.zeros((height, width), dtype=bool)
    masked = 0
    min_block = min(min_block_positions, count)
    while masked < count:
        budget = count - masked
        added = 0
        for _ in range(max_attempts):
            target_area = generator.uniform(min_block, max(min_block, budget))
            aspect_ratio = math.exp(generator.uniform(*log_aspect_range))
            block_h = int(round(math.sqrt(target_area * aspect_ratio)))
            block_w = int(round(math.sqrt(target_area / aspect_ratio)))
            if not (1 <= block_h <= height and 1 <= block_w <= width):
                continue
            top = int(generator.integers(0, height - block_h + 1))
            left = int(generator.integers(0, width - block_w + 1))
            window = mask[top : top + block_h, left : left + block_w]
            new = block_h * block_w - int(window.sum())
            if 0 < new <= budget:  # as BEiT: a block that would overshoot the budget is rejected
                window[...] = True
                added = new
                break
        if added == 0:
            break
        masked += added
    if masked < count:
        # BEiT stops early when no block fits the remaining budget; finish with single positions
        # so every mask has exactly ``count`` masked positions.
        free = np.flatnonzero(~mask.reshape(-1))
        mask.reshape(-1)[generator.choice(free, size=count - masked, replace=False)] = True
    return mask.reshape(-1)


def block_mask(
    batch_size: int,
    grid_shape: tuple[int, int],
    mask_ratio: float,
    rng: int | np.random.Generator | None = None,
    min_block_positions: int = 16,
    min_aspect_ratio: float = 0.3,
    max_attempts: int = 10,
) -> torch.Tensor:
    """BEVT block masks: BEiT block-wise masks of random area and aspect ratio, the same in every frame.

    Blocks of area uniform in [min_block_positions, remaining budget] and aspect ratio log-uniform in
    [min_aspect_ratio, 1 / min_aspect_ratio] are placed at random until the masked count is reached
    (a block that would overshoot is rejected, as in BEiT); when no block fits, single random
    positions complete the mask. ``min_block_positions`` is capped at the masked count, so small
    grids work. Returns bool ``[batch_size, h*w]``, True = masked, exactly
    ``num_masked_positions(h*w, mask_ratio)`` True per row.
    """
    height, width = _check_grid(grid_shape)
    if not 0.0 < min_aspect_ratio <= 1.0:
        raise ValueError(f"min_aspect_ratio must be in (0, 1], got {min_aspect_ratio}")
    if min_block_positions < 1:
        raise ValueError(f"min_block_positions must be >= 1, got {min_block_positions}")
    generator = _generator(rng)
    count = num_masked_positions(height * width, mask_ratio)
    log_aspect_range = (math.log(min_aspect_ratio), math.log(1.0 / min_aspect_ratio))
    rows = [
        _block_mask_one(height, width, count, generator, min_block_positions, log_aspect_range, max_attempts)
        for _ in range(batch_size)
    ]
    return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, height * width), dtype=bool))


def make_mask(
    kind: str,
    batch_size: int,
    grid_shape: tuple[int, int],
    mask_ratio: float,
    rng: int | np.random.Generator | None = None,
) -> torch.Tensor:
    """``tube_mask`` or ``block_mask`` by name ('tube' | 'block'). Returns bool ``[B, h*w]``."""
    if kind == "tube":
        return tube_mask(batch_size, grid_shape, mask_ratio, rng)
    if kind == "block":
        return block_mask(batch_size, grid_shape, mask_ratio, rng)
    raise ValueError(f"unknown mask kind {kind!r}; use one of {MASK_KINDS}")


def _indices(selected: torch.Tensor, what: str) -> torch.Tensor:
    counts = selected.sum(dim=1)
    if selected.shape[0] and not bool((counts == counts[0]).all()):
        raise ValueError(f"every row of the mask must have the same number of {what} positions, got {counts.tolist()}")
    width = int(counts[0]) if selected.shape[0] else 0
    # A stable sort puts the selected positions first, in ascending order.
    order = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)
    return order[:, :width]


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """bool mask ``[B, N]`` (True = masked) -> int64 ``[B, K]`` visible positions, ascending per row."""
    return _indices(~mask.bool(), "visible")


def masked_indices(mask: torch.Tensor) -> torch.Tensor:
    """bool mask ``[B, N]`` (True = masked) -> int64 ``[B, N - K]`` masked positions, ascending per row."""
    return _indices(mask.bool(), "masked")
