"""Read a long video as consecutive windows of a few seconds, each a fixed-size clip.

:func:`iter_windows` yields :class:`VideoWindow` records in time order; each window's clip is the
clip :func:`encoder.video.decode.load_clip` returns for the window's span (same sampling rule,
same pixels), but the file is opened once and read forward in a single pass instead of being
reopened and re-sought for every window.

Windows
    :func:`window_spans` cuts ``[0, duration)`` into consecutive windows ``[k * w, (k + 1) * w)``
    of ``w = window_s`` seconds, the last one ending at the video's end. A last piece shorter than
    half a window is merged into the window before it (so the last window lasts from ``w / 2`` to
    ``1.5 * w``); a video shorter than one window (or than 1.5 windows) is one window. Times are
    seconds from the start of the video stream, as ``load_clip``'s ``start`` and ``end``; the
    duration is :func:`~encoder.video.decode.stream_duration` (the one duration rule), measured
    from the packets (:func:`~encoder.video.decode.packet_time_span`) when the header has none.

Streaming
    One container and one frame cursor are kept across windows: each window continues decoding
    forward from where the previous one stopped, and seeks (forward) only when a keyframe lies
    between where decoding stands and the next sampled time, i.e. when the seek skips decoding,
    with ``load_clip``'s rules (dense windows, ``<= 4 * num_frames`` frames, decode forward; a
    seek that lands no later than where decoding stood stops seeking for the rest of the file, so
    the work stays within about two passes over it). ``start_index`` resumes after windows a
    caller already has (e.g. cached): the reader seeks straight to that window.

Memory
    Only the current window is held: each kept frame is converted and resized to ``size`` right
    after it is decoded (as ``load_clip`` does), at most ``num_frames`` of them, then assembled into
    the window's clip; the previous window's frames are dropped before the next one is read, and a
    decoded native frame is freed as soon as decoding moves past it (the cursor holds two: the one
    on screen and the next). Peak memory therefore does not grow with the video's length (a caller
    that keeps the previous window while asking for the next holds two clips).

Budgets
    Each window has its own budgets, as a ``load_clip`` call would: a wall-time limit
    (``time_limit_s``, counted from the moment the window starts reading; the first window's also
    counts opening the file) and a budget of decoded frames (twice the frames the header announces
    from the video's start to the window's end, at least :data:`~encoder.video.decode.MIN_FRAME_BUDGET`,
    enough for a resume that must decode from the only keyframe). Exceeding either raises
    :class:`~encoder.video.decode.VideoDecodeError`.

Damaged files
    A window is yielded only when every sampled time was reached by good decoding. When the file
    cannot be decoded past some point (truncated: the stream ends more than :data:`END_SLACK_S`
    seconds before a sampled time; or damaged data met after a good frame: an undecodable packet, a
    read error, a frame the decoder flags as corrupt), the windows read in
    full before that point are yielded and then :class:`WindowDecodeError` (a ``VideoDecodeError``)
    is raised, naming the file, the window and the time where good decoding ended. A window with
    some frames and the rest unreachable is never yielded: unlike a single ``load_clip`` clip, whose
    unreachable times reuse the nearest decoded frame, a window past the damage has no frame of its
    own to reuse. A caller may resume further on with ``start_index`` (the seek skips the damage
    when a later keyframe is readable). Damage that the decoder conceals without reporting an error
    (some VP9 and MPEG-TS files) cannot be told from content and is read like ``load_clip`` reads it.
    A stream that ends less than ``END_SLACK_S`` seconds before a sampled time (a container whose
    audio outlasts its video, rounding) holds its last frame, as ``load_clip`` does.

Progress
    ``on_window(done, total)`` is called after each window is read, just before it is yielded;
    or wrap the iterator with tqdm (:func:`video_window_spans` gives the count). Nothing is printed.
"""

from __future__ import annotations

import math
import os
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.common.errors import PrismVlmError
from encoder.video import decode as _decode  # its private helpers, reached through the module (tests patch them)
from encoder.video.decode import (
    DEFAULT_MAX_SIDE,
    DEFAULT_TIME_LIMIT_S,
    VideoDecodeError,
    check_num_frames,
    check_size,
    sample_times,
)

__all__ = [
    "END_SLACK_S",
    "MAX_LISTED_WINDOWS",
    "MIN_WINDOW_S",
    "VideoWindow",
    "WindowDecodeError",
    "WindowError",
    "check_window_s",
    "iter_windows",
    "video_window_spans",
    "window_spans",
]

MIN_WINDOW_S = 0.1
"""Shortest accepted window, in seconds."""
MAX_LISTED_WINDOWS = 1_000_000
"""Most windows :func:`window_spans` lists (a header may claim any duration; :func:`iter_windows`
computes its windows one at a time and has no such limit)."""
END_SLACK_S = 1.0
"""A stream may end up to this many seconds before a sampled time (its last frame held, as a player
shows it) before the window counts as cut short."""


class WindowError(PrismVlmError, ValueError):
    """A window argument that makes no sense (``window_s`` not a finite number of seconds of at least
    :data:`MIN_WINDOW_S`, a negative ``start_index`` ...): the message names it."""


class WindowDecodeError(VideoDecodeError):
    """A window could not be read in full: the file is damaged or cut short inside it.

    The windows before it were yielded. Attributes (besides ``path`` and ``reason``):
        index: the window that could not be read.
        start, end: its span, in seconds from the start of the video.
        failed_at: where good decoding ended, in seconds from the start of the video.
    """

    def __init__(self, path: str | os.PathLike, index: int, start: float, end: float, failed_at: float):
        self.index, self.start, self.end, self.failed_at = index, start, end, failed_at
        super().__init__(
            path,
            f"decoding failed at {failed_at:.2f}s, in window {index} ({start:.2f}-{end:.2f}s): "
            "the file is damaged or cut short there",
        )


@dataclass
class VideoWindow:
    """One window of a video and its clip."""

    index: int  # position in the video's windows (0 for the first)
    start: float  # seconds from the start of the video
    end: float  # seconds from the start of the video (exclusive)
    clip: np.ndarray  # [T, size, size, 3] float32 in [0, 1] (as load_clip(path, T, size, start, end))


# ----------------------------------------------------------------------------- window spans


def check_window_s(window_s: float) -> float:
    """``window_s`` as a float in ``[MIN_WINDOW_S, inf)``; anything else is a :class:`WindowError`."""
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float, np.integer, np.floating)):
        raise WindowError(f"window_s must be a number of seconds, got {window_s!r}")
    if not math.isfinite(window_s) or window_s < MIN_WINDOW_S:
        raise WindowError(f"window_s must be a finite number of seconds >= {MIN_WINDOW_S}, got {window_s}")
    return float(window_s)


def window_spans(duration_s: float, window_s: float) -> list[tuple[float, float]]:
    """Consecutive windows ``(start, end)`` covering ``[0, duration_s)``, in seconds.

    Window ``k`` is ``[k * window_s, (k + 1) * window_s)``; the last one ends at ``duration_s``. A
    last piece shorter than half a window is merged into the previous window (which then lasts up to
    1.5 windows); a video shorter than one window is one window ``(0, duration_s)``.

    Raises:
        WindowError: ``window_s`` is not a finite number ``>= MIN_WINDOW_S``, ``duration_s`` not a
            finite positive number, or the windows would be more than :data:`MAX_LISTED_WINDOWS`.
    """
    window_s = check_window_s(window_s)
    duration_s = _check_duration(duration_s)
    count = _window_count(duration_s, window_s)
    if count > MAX_LISTED_WINDOWS:
        raise WindowError(
            f"{duration_s:.0f}s in windows of {window_s}s makes {count} windows, more than {MAX_LISTED_WINDOWS} "
            "(use longer windows, or iter_windows, which does not list them)"
        )
    return [_span(k, count, duration_s, window_s) for k in range(count)]


def video_window_spans(path: str | os.PathLike, window_s: float = 8.0) -> list[tuple[float, float]]:
    """:func:`window_spans` of a video file's duration (the header only, nothing decoded): the spans
    :func:`iter_windows` reads, e.g. for a progress bar's total or to check a cache.

    Raises:
        WindowError: a bad ``window_s``.
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: the file is not a readable video.
    """
    window_s = check_window_s(window_s)
    path = Path(path)
    _decode._check_video_file(path)
    with _decode._open(path) as container:
        info = _decode._stream_info(container, _decode._video_stream(container, path), path)
    return window_spans(info.duration, window_s)


def _check_duration(duration_s: float) -> float:
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float, np.integer, np.floating)):
        raise WindowError(f"duration_s must be a number of seconds, got {duration_s!r}")
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise WindowError(f"duration_s must be a finite, positive number of seconds, got {duration_s}")
    return float(duration_s)


def _window_count(duration_s: float, window_s: float) -> int:
    full = math.floor(duration_s / window_s)
    if full == 0:
        return 1
    return full + (1 if duration_s - full * window_s >= window_s / 2 else 0)


def _span(index: int, count: int, duration_s: float, window_s: float) -> tuple[float, float]:
    start = index * window_s
    return start, duration_s if index == count - 1 else (index + 1) * window_s


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise WindowError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- reading


def iter_windows(
    path: str | os.PathLike,
    window_s: float = 8.0,
    num_frames: int = 16,
    size: int | None = 288,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    start_index: int = 0,
    max_windows: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> Iterator[VideoWindow]:
    """Read a video file as consecutive windows, in one forward pass (see the module docstring).

    Args:
        path: video file.
        window_s: window length in seconds (:func:`window_spans` gives the windows).
        num_frames: T, frames per window (1 to ``MAX_NUM_FRAMES``).
        size: output side length, as for ``load_clip`` (None: native resolution).
        max_side: a frame wider or taller than this (or of more than ``max_side ** 2`` pixels) is a
            VideoDecodeError (None: no limit).
        time_limit_s: wall-time budget of each window, in seconds (None: none).
        start_index: first window to read; the earlier ones are skipped by seeking, not decoded.
            At or past the number of windows, nothing is yielded.
        max_windows: read at most this many windows (None: to the end).
        on_window: called as ``on_window(done, total)`` after each window is read, before it is
            yielded: ``done`` windows of the ``total`` this call reads.

    Yields:
        :class:`VideoWindow` in time order, ``clip`` float32 ``[T, size, size, 3]`` in ``[0, 1]``,
        equal to ``load_clip(path, num_frames, size, start=window.start, end=window.end)``.

    Raises:
        WindowError: a bad ``window_s``, ``start_index``, ``max_windows`` or ``on_window``, or an image
            file (at the call).
        ValueError: a bad ``num_frames``, ``size``, ``max_side`` or ``time_limit_s`` (at the call).
        FileNotFoundError: ``path`` does not exist (at the call).
        WindowDecodeError: the file is damaged or cut short inside a window; the windows before it
            were yielded.
        VideoDecodeError: the file is not a readable video, or a window exceeds a budget or ``max_side``.
    """
    windows = _iter_windows_with_stats(
        path,
        window_s,
        num_frames,
        size,
        max_side=max_side,
        time_limit_s=time_limit_s,
        start_index=start_index,
        max_windows=max_windows,
        on_window=on_window,
    )
    return (window for window, _ in windows)


def _iter_windows_with_stats(
    path: str | os.PathLike,
    window_s: float = 8.0,
    num_frames: int = 16,
    size: int | None = 288,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    start_index: int = 0,
    max_windows: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[VideoWindow, _decode._DecodeStats]]:
    """:func:`iter_windows` plus each window's record of how its frames were obtained. Arguments are
    checked here, at the call; the file is opened at the first ``next``."""
    window_s = check_window_s(window_s)
    num_frames = check_num_frames(num_frames)
    size = None if size is None else check_size(size)
    _decode._check_limits(max_side, time_limit_s)
    start_index = _check_count("start_index", start_index)
    max_windows = None if max_windows is None else _check_count("max_windows", max_windows)
    if on_window is not None and not callable(on_window):
        raise WindowError(f"on_window must be callable or None, got {on_window!r}")
    path = Path(path)
    if path.suffix.lower() in _decode.IMAGE_SUFFIXES:
        raise WindowError(f"windows apply to video files, not to an image file: {str(path)!r}")
    _decode._check_video_file(path)
    return _read_windows(path, window_s, num_frames, size, max_side, time_limit_s, start_index, max_windows, on_window)


def _read_windows(
    path: Path,
    window_s: float,
    num_frames: int,
    size: int | None,
    max_side: int | None,
    time_limit_s: float | None,
    start_index: int,
    max_windows: int | None,
    on_window: Callable[[int, int], None] | None,
) -> Iterator[tuple[VideoWindow, _decode._DecodeStats]]:
    began = _time.monotonic()
    with _decode._open(path, max_side) as container:
        stream = _decode._video_stream(container, path)
        first_deadline = began + time_limit_s if time_limit_s is not None else math.inf
        info = _decode._stream_info(container, stream, path, first_deadline)
        count = _window_count(info.duration, window_s)
        stop = count if max_windows is None else min(count, start_index + max_windows)
        total = max(stop - start_index, 0)
        convert = _decode._Converter(path, size, max_side)
        reader = None
        for done, index in enumerate(range(start_index, stop), start=1):
            start, end = _span(index, count, info.duration, window_s)
            times = sample_times(info.start + start, info.start + end, num_frames)
            window_frames = (end - start) * info.fps if info.fps else math.inf
            announced = int(end * info.fps) if info.fps else 0  # from the video's start to the window's end
            stats = _decode._DecodeStats(
                times=times,
                sequential=not info.can_seek or window_frames <= _decode._SEQUENTIAL_FRAMES_PER_SAMPLE * num_frames,
                frame_budget=max(_decode.MIN_FRAME_BUDGET, 2 * announced),
                deadline=(began if done == 1 else _time.monotonic()) + time_limit_s
                if time_limit_s is not None
                else math.inf,
            )
            if reader is None:
                # Frame threads pay off on long forward runs, but are refilled after every seek.
                _decode.set_threads(stream, "AUTO" if stats.sequential else "SLICE")
                reader = _decode._TimeReader(container, stream, info, stats, path)
            frames = reader.read(times, stats, convert, reseek=not stats.sequential, end_slack=END_SLACK_S)
            if reader.failed is not None:
                failed_at = max(reader.failed[1] - info.start, 0.0)
                raise WindowDecodeError(path, index, start, end, failed_at)
            window = VideoWindow(index=index, start=start, end=end, clip=_decode._to_clip(frames, size))
            del frames  # hold only the clip from here on
            if on_window is not None:
                on_window(done, total)
            yield window, stats
            del window  # the consumer may drop it: the next window is read without it
