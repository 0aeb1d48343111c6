"""argparse types that check a flag's range when the command line is parsed, so an absurd value
(``--frames 0``, ``--batch-size -3``) is refused with a usage error before any model loads or any
output is written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers in ``[low, high]`` (no upper bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


FRAMES = int_range(1, 4096)  # encoder.video.MAX_NUM_FRAMES
FRAME_SIZE = int_range(1, 4096)  # encoder.video.MAX_SIZE
POSITIVE = int_range(1)
NON_NEGATIVE = int_range(0)
NEW_TOKENS = int_range(1, 8192)
