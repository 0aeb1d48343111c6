"""What the app accepts: upload size, clip duration and resolution, frames, tokens, chat length,
candidates, and how many requests run and wait at once.

:func:`check_video` is the gate every uploaded or example clip passes before any decoding: it
reads only the container header (PyAV, local files only) and raises :class:`VideoRejectedError`
with a message written for the person who uploaded the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from encoder.common.errors import PrismVlmError
from encoder.video.decode import (
    VIDEO_SUFFIXES,
    VideoDecodeError,
    open_video,
    packet_time_span,
    stream_duration,
    video_stream,
)

__all__ = [
    "VIDEO_SUFFIXES",
    "AppLimits",
    "VideoInfo",
    "VideoRejectedError",
    "check_video",
    "decode_slot",
    "probe_video",
]


class VideoRejectedError(PrismVlmError, ValueError):
    """A clip the app will not process (wrong type, too large, too long, unreadable); the message
    is meant for the person who uploaded it."""


@dataclass(frozen=True)
class AppLimits:
    """Bounds on what one request may cost, and on the request queue.

    max_upload_mb: largest accepted file (enforced by the server on upload and again here).
    max_duration_s: longest accepted clip, in seconds.
    max_side_px: largest accepted frame width or height (decoding cost grows with it); checked on
        the header and again on every decoded frame (the size may change mid-stream).
    max_decode_s: wall-time budget for decoding one clip, in seconds.
    max_frames: largest number of frames a request may sample.
    max_new_tokens: largest number of tokens a request may generate.
    max_chat_turns: earlier question/answer pairs kept in a chat prompt (older ones are dropped).
    max_message_chars: longest accepted chat message, question or candidate answer, in characters.
    max_prompt_tokens: longest accepted chat message or question, in LLM tokens.
    max_history_tokens: earlier chat turns kept in a prompt, in LLM tokens all together (oldest
        dropped first; the page says so).
    max_candidates: most candidate answers one closed-vocabulary question may rank.
    max_candidate_tokens: longest accepted candidate answer, in LLM tokens.
    concurrency: requests processed at once (decoding overlaps; model work runs one piece at a time,
        and requests being processed together are generated as one batch, so this also bounds the
        batches the app can form).
    queue_size: requests allowed to wait; beyond that new ones are refused with "queue full".
    upload_ttl_s: uploads older than this are deleted (checked every quarter of it).
    max_windows: most windows of a long video (one longer than one window, read window by window:
        ``apps.long_video``) a request may read; the app's default is max_duration_s / the window.
    max_decodes: clips decoded at once (:func:`decode_slot`); further requests wait for a slot.
    """

    max_upload_mb: float = 200.0
    max_duration_s: float = 600.0
    max_side_px: int = 4096
    max_decode_s: float = 60.0
    max_frames: int = 32
    max_new_tokens: int = 256
    max_chat_turns: int = 8
    max_message_chars: int = 2000
    max_prompt_tokens: int = 256
    max_history_tokens: int = 1024
    max_candidates: int = 2000
    max_candidate_tokens: int = 32
    concurrency: int = 16
    queue_size: int = 64
    upload_ttl_s: float = 1800.0
    max_windows: int = 75  # 600 s in windows of 8 s
    max_decodes: int = 4

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"AppLimits.{name} must be a positive number, got {value!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VideoInfo:
    """Header facts of an accepted clip: duration in seconds, frame width and height in pixels."""

    duration_s: float
    width: int
    height: int


def _display_name(path: Path) -> str:
    return path.name or str(path)


SCAN_FRAME_RATE = 60
"""A clip without a duration in its header is measured from its packets: at most this many per
second of the longest accepted clip are read (a file of empty packets would otherwise be read whole)."""
SCAN_SECONDS = 5.0
"""Wall-time budget of that measurement."""


_DECODE_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_DECODE_SLOTS_LOCK = threading.Lock()


@contextlib.contextmanager
def decode_slot(limits: AppLimits) -> Iterator[None]:
    """Hold one of the process's ``limits.max_decodes`` decoding slots for the ``with`` block (waits
    for a free one): however many requests run, at most that many clips are decoded at once."""
    with _DECODE_SLOTS_LOCK:
        slots = _DECODE_SLOTS.setdefault(limits.max_decodes, threading.BoundedSemaphore(limits.max_decodes))
    with slots:
        yield


def probe_video(path: str | os.PathLike, limits: AppLimits | None = None) -> VideoInfo:
    """Duration and frame size from the container header (demuxing packet times only when the
    header has no duration, within :data:`SCAN_FRAME_RATE` packets per second of
    ``limits.max_duration_s`` and :data:`SCAN_SECONDS`). The duration is the one the decoder samples
    a clip from (:func:`encoder.video.decode.stream_duration`). Raises VideoRejectedError when the
    file is no readable video."""
    limits = limits or AppLimits()
    path = Path(path)
    name = _display_name(path)
    try:
        container = open_video(path, max_side=limits.max_side_px)
    except VideoDecodeError as error:
        raise VideoRejectedError(f"'{name}' is not a video this app can read ({error.reason}).") from error
    with container:
        try:
            stream = video_stream(container, path)  # the stream the decoder will read
        except VideoDecodeError as error:
            raise VideoRejectedError(f"'{name}' has no video stream.") from error
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        duration = stream_duration(container, stream)  # the length the decoder samples from
        if duration is None:
            budget = max(10_000, int(limits.max_duration_s * SCAN_FRAME_RATE))
            try:
                span = packet_time_span(
                    container,
                    stream,
                    deadline=time.monotonic() + SCAN_SECONDS,
                    max_packets=budget,
                    max_duration_s=limits.max_duration_s,
                )
            except VideoDecodeError as error:
                raise VideoRejectedError(
                    f"'{name}' has no duration in its header and more video packets than this app reads "
                    f"to measure one ({error.reason})."
                ) from error
            duration = 0.0 if span is None else span[1]
    if width <= 0 or height <= 0:
        raise VideoRejectedError(f"'{name}' has a video stream without a frame size.")
    return VideoInfo(duration_s=duration, width=width, height=height)


def check_video(path: str | os.PathLike | None, limits: AppLimits) -> VideoInfo:
    """Accept or reject a clip before decoding it: type by suffix, size, readability, duration and
    frame size. Returns its VideoInfo; raises VideoRejectedError with a readable reason."""
    if path is None or str(path).strip() == "":
        raise VideoRejectedError("Upload a video (or pick an example) first.")
    path = Path(path)
    name = _display_name(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoRejectedError(f"'{name}' is not a supported video type; upload one of {', '.join(VIDEO_SUFFIXES)}.")
    if not path.is_file():
        raise VideoRejectedError(f"'{name}' is no longer on the server; upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise VideoRejectedError(f"'{name}' is empty.")
    if size > limits.max_upload_bytes:
        raise VideoRejectedError(
            f"'{name}' is {size / 2**20:.1f} MB; this app accepts videos up to {limits.max_upload_mb:g} MB."
        )
    info = probe_video(path, limits)
    if info.duration_s > limits.max_duration_s:
        raise VideoRejectedError(
            f"'{name}' is {info.duration_s:.1f} s long; this app accepts clips up to {limits.max_duration_s:g} s."
        )
    if max(info.width, info.height) > limits.max_side_px:
        raise VideoRejectedError(
            f"'{name}' is {info.width}x{info.height}; this app accepts frames up to {limits.max_side_px} px a side."
        )
    return info
