"""Temporarily set torch's CPU thread count (small models on a few shared cores run faster on fewer
threads than torch's default of one per core)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``, restoring the previous count after
    it; None leaves the count alone. ValueError for a count below 1."""
    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ValueError(f"the number of torch threads must be >= 1, got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
