"""Reading a long video once: its windows through the glue (soft prompts) and the video-text model
(embeddings), in batches, each kind stored per window in the window cache as it is computed.

:func:`read_long_video` streams the file once per window length and frame setting (the glue reads windows of
``window_s``, the video-text model windows of a quarter of that, so that moments are found to a finer step;
:func:`encoder.video.windows.iter_windows`: memory holds one batch of windows' frames, whatever the video's
length), skips the windows a cache entry already holds, and returns a :class:`LongVideo`: the windows'
spans, the video-text embeddings [N', D] in memory (small) and the glue's soft prompts [N, L, H], read back
from the cache when needed (:meth:`LongVideo.glue_features`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from encoder.video.decode import VideoDecodeError
from encoder.video.windows import iter_windows, video_window_spans
from vlm.long_video import DEFAULT_WINDOW_S
from vlm.long_video.cache import WindowCache, WindowSettings, module_fingerprint

GLUE, VIDEO_TEXT = "glue", "video_text"
TEXT_WINDOW_FRACTION = 0.25  # the video-text model reads windows of a quarter window: moments to about 2 s


class _MemoryStore:
    """Windows' values kept in memory (when the cache is off): the same calls as a cache entry."""

    complete = False

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    @property
    def num_windows(self) -> int:
        return sum(len(part) for part in self.parts)

    def append(self, values: torch.Tensor) -> None:
        self.parts.append(values.detach().to("cpu", torch.float16))

    def load(self) -> torch.Tensor | None:
        return torch.cat(self.parts) if self.parts else None

    def load_range(self, start: int, stop: int) -> torch.Tensor:
        return self.load()[start:stop]

    def finish(self) -> None:
        self.complete = True


@dataclass
class _Kind:
    """One kind of per-window tensor to compute: how, from which frames, stored where."""

    name: str
    compute: Callable[[torch.Tensor], torch.Tensor]  # clips [B, T, S, S, 3] -> values [B, ...]
    num_frames: int
    frame_size: int
    fingerprint: str
    window_s: float
    store: object = None
    spans: list = field(default_factory=list)


@dataclass
class LongVideo:
    """A long video read as windows.

    path; window_s: the window length asked for; spans: [N, 2] float64 (start, end) in seconds of the glue's
    windows; text_spans: [N', 2] of the video-text model's windows (a quarter window each, so that moments
    are found to a finer step); embeddings: [N', D] float32 L2-normalised video-text embeddings (None
    without a video-text model); duration: seconds.
    """

    path: Path
    window_s: float
    spans: np.ndarray
    embeddings: torch.Tensor | None = None
    text_spans: np.ndarray | None = None
    _glue_store: object = field(default=None, repr=False)
    _glue_dtype: torch.dtype = torch.float32

    @property
    def num_windows(self) -> int:
        return len(self.spans)

    @property
    def duration(self) -> float:
        return float(self.spans[-1, 1]) if len(self.spans) else 0.0

    def text_window_at(self, time_s: float) -> int:
        """The index of the video-text window holding ``time_s`` (clamped to the video)."""
        index = int(np.searchsorted(self.text_spans[:, 1], float(time_s), side="right"))
        return min(max(index, 0), len(self.text_spans) - 1)

    def window_at(self, time_s: float) -> int:
        """The index of the window holding ``time_s`` (clamped to the video)."""
        index = int(np.searchsorted(self.spans[:, 1], float(time_s), side="right"))
        return min(max(index, 0), self.num_windows - 1)

    def glue_features(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """The glue's soft prompts of the windows ``indices`` (all when None): [n, L, H] in the LLM's dtype,
        read from the cache chunks that hold them."""
        if self._glue_store is None:
            raise ValueError("this long video was read without the glue")
        if indices is None:
            return self._glue_store.load_range(0, self.num_windows).to(self._glue_dtype)
        rows = [self._glue_store.load_range(index, index + 1) for index in indices]
        return torch.cat(rows).to(self._glue_dtype)

    def iter_glue_batches(self, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(window indices, soft prompts [b, L, H]) in order, ``batch_size`` windows at a time (memory holds
        one batch and the cache chunks it spans, not the whole video's soft prompts)."""
        if self._glue_store is None:
            raise ValueError("this long video was read without the glue")
        for start in range(0, self.num_windows, batch_size):
            stop = min(start + batch_size, self.num_windows)
            yield list(range(start, stop)), self._glue_store.load_range(start, stop).to(self._glue_dtype)


def read_long_video(
    path: str | os.PathLike,
    *,
    model=None,
    video_text_model=None,
    window_s: float = DEFAULT_WINDOW_S,
    cache: WindowCache | None = None,
    batch_size: int = 8,
    max_side: int | None = None,
    progress: bool = False,
    run: Callable[[Callable[[], torch.Tensor]], torch.Tensor] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LongVideo:
    """Read ``path`` as consecutive windows of ``window_s`` seconds through the glue ``model``
    (:class:`vlm.model.PrismVlmForConditionalGeneration`, soft prompts [L, H] per window) and/or windows of a
    quarter of that through the ``video_text_model`` (:class:`vlm.retrieval.video_text_model.VideoTextModel`,
    an embedding [D] per window), ``batch_size`` windows at a time. Windows a cache entry already holds are not decoded again
    (``cache``: a :class:`WindowCache`; None: the default one). A file that cannot be decoded part way
    keeps (in the cache) the windows before the damage and raises ``VideoDecodeError``.

    ``run``: calls each batch's model computation (``run(work)`` returns ``work()``; default: here), e.g. in a
    server's model thread so that other requests run between batches. ``on_progress(done, total)``: called
    after each batch with the windows computed so far and all to compute (every kind's pass together)."""
    from tqdm.auto import tqdm

    if model is None and video_text_model is None:
        raise ValueError("read a long video with the glue model, the video-text model, or both")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    cache = cache if cache is not None else WindowCache()
    kinds = []
    if model is not None:
        if model.encoder is None:
            raise ValueError("the glue has no video encoder to read the video with")
        fingerprint = module_fingerprint(model.encoder) + module_fingerprint(model.resampler)

        def glue(clips: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model.get_video_features(clips=clips)

        kinds.append(_Kind(GLUE, glue, model.config.num_frames, model.config.frame_size, fingerprint, window_s))
    if video_text_model is not None:
        fingerprint = module_fingerprint(video_text_model.clip)
        kinds.append(
            _Kind(
                VIDEO_TEXT,
                video_text_model.embed_clips,
                video_text_model.num_frames,
                video_text_model.frame_size,
                fingerprint,
                window_s * TEXT_WINDOW_FRACTION,
            )
        )
    for kind in kinds:
        kind.spans = video_window_spans(path, kind.window_s)
        settings = WindowSettings(kind.name, kind.fingerprint, float(kind.window_s), kind.num_frames, kind.frame_size)
        kind.store = cache.entry(path, settings, kind.spans) if cache.enabled else _MemoryStore()
    # one pass over the file per window length and frame setting, from the first window some kind still needs
    by_frames: dict[tuple[float, int, int], list[_Kind]] = {}
    for kind in kinds:
        if not kind.store.complete:
            by_frames.setdefault((kind.window_s, kind.num_frames, kind.frame_size), []).append(kind)
    run = run if run is not None else (lambda work: work())
    to_compute = sum(
        len(group[0].spans) - min(kind.store.num_windows for kind in group) for group in by_frames.values()
    )
    computed = 0
    for (length, num_frames, frame_size), group in by_frames.items():
        first = min(kind.store.num_windows for kind in group)
        total = len(group[0].spans)
        bar = tqdm(total=total, initial=first, unit="window", desc="reading", disable=not progress)
        batch: list[np.ndarray] = []
        index = first

        def flush() -> None:
            nonlocal index, computed
            clips = torch.from_numpy(np.stack(batch))
            for kind in group:
                done = kind.store.num_windows
                if done < index + len(batch):  # this kind lacks some windows of the batch
                    kind.store.append(run(lambda kind=kind, done=done: kind.compute(clips[done - index :])))
            index += len(batch)
            computed += len(batch)
            bar.update(len(batch))
            batch.clear()
            if on_progress is not None:
                on_progress(computed, to_compute)

        try:
            windows = iter_windows(path, length, num_frames, frame_size, max_side=max_side, start_index=first)
            try:
                for window in windows:
                    batch.append(window.clip)
                    if len(batch) == batch_size:
                        flush()
            except VideoDecodeError:
                if batch:  # the whole windows read before the damage are kept
                    flush()
                raise
            if batch:
                flush()
        finally:
            bar.close()
        for kind in group:
            kind.store.finish()
    if cache.enabled:
        for kind in kinds:
            cache.evict(keep=kind.store.directory)
    glue_spans = video_window_spans(path, window_s) if model is None else kinds[0].spans
    long_video = LongVideo(path, float(window_s), np.asarray(glue_spans, dtype=np.float64).reshape(-1, 2))
    for kind in kinds:
        if kind.name == VIDEO_TEXT:
            long_video.embeddings = kind.store.load().float()
            long_video.text_spans = np.asarray(kind.spans, dtype=np.float64).reshape(-1, 2)
        else:
            long_video._glue_store = kind.store
            long_video._glue_dtype = model.get_input_embeddings().weight.dtype
    return long_video
