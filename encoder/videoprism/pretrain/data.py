"""Pretraining data: caption manifests, clips (images as one-frame videos), alternating batches.

A manifest is a JSONL file, one example per line::

    {"video": "clips/0001.mp4", "caption": "a red square moves left"}
    {"image": "images/cat.jpg", "caption": "a cat on a sofa"}
    {"video": "clips/0002.mp4", "start": 3.0, "end": 8.5}            # stage 2 needs no caption
    {"video": "clips/0003.mp4", "caption": "a red star moves up",
     "negative_captions": ["a red heart moves up", "a red star moves down"]}  # hard negatives (optional)

Paths are relative to the manifest's folder. Each manifest is one dataset; a dataset holds either
videos or images (images are one-frame clips, so a batch never mixes frame counts).

Batches follow alternating gradient descent (paper appendix C.1): every batch comes from one
dataset, and the datasets take turns (step s uses dataset s mod D). Within a dataset, examples are
drawn without replacement from a seeded permutation per epoch. The batch of step s is a pure
function of (seed, s), so resuming at step s reproduces the exact same data order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoder.common.errors import PrismVlmError
from encoder.common.jsonl import iter_jsonl_strict
from encoder.video.decode import load_clip


class ManifestError(PrismVlmError, ValueError):
    """A manifest line is malformed (the message names the file and line)."""


@dataclass(frozen=True)
class Example:
    """One manifest row. ``path`` is absolute; ``caption`` is None when the manifest has none;
    ``negative_captions`` are captions that do NOT describe the example (contrastive hard negatives)."""

    path: Path
    is_image: bool
    caption: str | None = None
    start: float | None = None
    end: float | None = None
    negative_captions: tuple[str, ...] = ()


def read_manifest(manifest: str | os.PathLike, require_captions: bool = True) -> list[Example]:
    """Rows of a JSONL caption manifest. Raises FileNotFoundError / ManifestError naming the file and line."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    root = manifest.parent
    examples = []
    for number, row in iter_jsonl_strict(manifest, ManifestError):
        where = f"{manifest}:{number}"
        if ("video" in row) == ("image" in row):
            raise ManifestError(f"{where}: a row must be an object with exactly one of 'video' or 'image'")
        is_image = "image" in row
        path = row["image" if is_image else "video"]
        if not isinstance(path, str) or not path:
            raise ManifestError(f"{where}: the {'image' if is_image else 'video'} path must be a non-empty string")
        caption = row.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise ManifestError(f"{where}: 'caption' must be a string")
        if require_captions and not (caption and caption.strip()):
            raise ManifestError(f"{where}: no caption (contrastive training needs one per example)")
        negatives = row.get("negative_captions", [])
        if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
            raise ManifestError(f"{where}: 'negative_captions' must be a list of non-empty strings")
        start, end = row.get("start"), row.get("end")
        if is_image and (start is not None or end is not None):
            raise ManifestError(f"{where}: an image has no 'start'/'end'")
        examples.append(Example(root / path, is_image, caption, start, end, tuple(negatives)))
    if not examples:
        raise ManifestError(f"{manifest}: no examples")
    kinds = {example.is_image for example in examples}
    if len(kinds) > 1:
        raise ManifestError(
            f"{manifest}: mixes videos and images; put them in separate manifests (each batch comes "
            "from one dataset, and a batch cannot mix one-frame images with multi-frame videos)"
        )
    return examples


# Decoded clips kept by every ClipDataset with cache_clips, keyed by (file, start, end, frames, size):
# several trainings in one process (stage 1, stage 2 and its ablations) decode each clip once.
_CLIP_CACHE: dict[tuple, np.ndarray] = {}


def clear_clip_cache() -> None:
    """Free the decoded clips that ``ClipDataset(cache_clips=True)`` keeps for the whole process."""
    _CLIP_CACHE.clear()


class ClipDataset:
    """One manifest's examples as pixel clips.

    Videos become ``num_frames`` uniformly sampled frames, images one frame, each resized and
    centre-cropped to ``image_size`` (``encoder.video.decode.load_clip``). With ``cache_clips`` every
    clip is decoded once and kept in memory as uint8 (a quarter of float32; values are rounded to
    1/255), which pays off on small corpora where decoding dominates a training step. The cache
    is shared by all datasets of the process (a clip read by two trainings is decoded once) until
    :func:`clear_clip_cache`.
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        num_frames: int,
        image_size: int,
        require_captions: bool = True,
        cache_clips: bool = False,
    ):
        self.manifest = Path(manifest)
        self.name = self.manifest.stem
        self.examples = read_manifest(self.manifest, require_captions)
        self.is_image = self.examples[0].is_image
        self.num_frames = 1 if self.is_image else int(num_frames)
        self.image_size = int(image_size)
        self.cache_clips = cache_clips

    def __len__(self) -> int:
        return len(self.examples)

    def clip(self, index: int) -> np.ndarray:
        """float32 [T, S, S, 3] RGB in [0, 1] (T = 1 for images)."""
        example = self.examples[index]
        key = (str(example.path), example.start, example.end, self.num_frames, self.image_size)
        cached = _CLIP_CACHE.get(key) if self.cache_clips else None
        if cached is not None:
            return cached.astype(np.float32) / 255.0
        clip = load_clip(
            example.path, num_frames=self.num_frames, size=self.image_size, start=example.start, end=example.end
        )
        if self.cache_clips:
            _CLIP_CACHE[key] = np.round(clip * 255.0).astype(np.uint8)
            return _CLIP_CACHE[key].astype(np.float32) / 255.0
        return clip

    def caption(self, index: int) -> str:
        caption = self.examples[index].caption
        if caption is None:
            raise ManifestError(f"{self.manifest}: example {index} ({self.examples[index].path}) has no caption")
        return caption

    def negative_captions(self, index: int) -> tuple[str, ...]:
        return self.examples[index].negative_captions

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """float32 [B, T, 3, S, S], the layout transformers' VideoPrism takes."""
        clips = np.stack([self.clip(int(i)) for i in indices])  # [B, T, S, S, 3]
        return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).contiguous()


class AlternatingBatches:
    """Which dataset and rows each training step uses (alternating gradient descent).

    Step s uses dataset ``s % D`` and that dataset's ``s // D``-th batch. A dataset's epoch is a
    seeded permutation of its rows cut into ``len // batch_size`` batches (the remainder is left
    out of that epoch), so no batch repeats an example.
    """

    def __init__(
        self, dataset_sizes: Sequence[int], batch_size: int, seed: int = 0, names: Sequence[str] | None = None
    ):
        if not dataset_sizes:
            raise ValueError("no datasets")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        for i, size in enumerate(dataset_sizes):
            if size < batch_size:
                name = names[i] if names else f"dataset {i}"
                raise ValueError(
                    f"{name} has {size} examples, fewer than the batch size {batch_size} "
                    "(a contrastive batch must not repeat an example)"
                )
        self.dataset_sizes = [int(size) for size in dataset_sizes]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def _epoch(self, dataset: int, epoch: int) -> np.ndarray:
        key = (dataset, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 64:
                self._permutations.clear()
            generator = np.random.default_rng([self.seed, dataset, epoch])
            self._permutations[key] = generator.permutation(self.dataset_sizes[dataset])
        return self._permutations[key]

    def batches_per_epoch(self, dataset: int) -> int:
        return self.dataset_sizes[dataset] // self.batch_size

    def batch(self, step: int) -> tuple[int, np.ndarray]:
        """-> (dataset index, int64 row indices [batch_size]) for ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        dataset = step % len(self.dataset_sizes)
        turn = step // len(self.dataset_sizes)
        epoch, within = divmod(turn, self.batches_per_epoch(dataset))
        rows = self._epoch(dataset, epoch)[within * self.batch_size : (within + 1) * self.batch_size]
        return dataset, rows.astype(np.int64)

    def epochs_done(self, step: int) -> list[float]:
        """Epochs of each dataset consumed after ``step`` steps."""
        turns = [len(range(d, step, len(self.dataset_sizes))) for d in range(len(self.dataset_sizes))]
        return [turn / self.batches_per_epoch(d) for d, turn in enumerate(turns)]
