"""Training-time crops of clips (the paper's appendix G): each frame is centre-cropped to 346 px
and a random 288 px square is cut from it in training; evaluation uses the plain centre crop at 288.
For other frame sizes the 346/288 ratio is kept: :func:`crop_source_size`.

A random crop is seeded, never drawn from a global RNG, so that training is reproducible across
resumes, worker processes and machines: :func:`random_crop` takes a ``numpy.random.Generator``;
:func:`cache_crop_offsets` derives the k-th crop of a video in a feature cache from its name.
"""

from __future__ import annotations

import hashlib

import numpy as np

PAPER_CROP_SOURCE, PAPER_FRAME_SIZE = 346, 288


def crop_source_size(size: int) -> int:
    """Side of the centre crop the random crops are cut from: ``round(size * 346 / 288)`` (346 for 288)."""
    return int(round(size * PAPER_CROP_SOURCE / PAPER_FRAME_SIZE))


def random_crop_offsets(rng: np.random.Generator, source: int, size: int) -> tuple[int, int]:
    """(top, left) of a uniformly random ``size`` square inside a ``source`` square."""
    if size > source:
        raise ValueError(f"cannot crop {size} px from {source} px")
    return int(rng.integers(0, source - size + 1)), int(rng.integers(0, source - size + 1))


def crop_clip(clip: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The same ``size x size`` window of every frame: [T, S, S, C] -> [T, size, size, C] (a view)."""
    if clip.ndim != 4 or top < 0 or left < 0 or top + size > clip.shape[1] or left + size > clip.shape[2]:
        raise ValueError(f"crop ({top}, {left}, {size}) does not fit clip of shape {clip.shape}")
    return clip[:, top : top + size, left : left + size]


def random_crop(clip: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size`` crop (the same window for all frames) of a square clip [T, S, S, C]."""
    top, left = random_crop_offsets(rng, clip.shape[1], size)
    return crop_clip(clip, top, left, size)


def cache_crop_offsets(video: str, crop: int, seed: int, source: int, size: int) -> tuple[int, int]:
    """(top, left) of random crop number ``crop`` (>= 1) of ``video`` in a feature cache: a function
    of (seed, video name, crop) only."""
    digest = int.from_bytes(hashlib.sha1(video.encode("utf-8")).digest()[:8], "little")
    return random_crop_offsets(np.random.default_rng([seed, digest, crop]), source, size)
