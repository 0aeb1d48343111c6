"""Decode videos, images and frame arrays into fixed-size clips for the video encoder.

The public entry point is :func:`load_clip`, which turns a video file, an image file, a
numpy array or a list of PIL images into a float32 clip ``[T, size, size, 3]`` with RGB
values in ``[0, 1]``. :func:`decode_frames` is the lower-level, seek-based video reader.

Sampling rule
    ``num_frames`` times are taken uniformly over the clip (or the ``[start, end]``
    window): the centres of ``num_frames`` equal segments (:func:`sample_times`). For
    each time ``t`` the frame *displayed* at ``t`` is used, i.e. the last frame whose
    presentation time (``pts * time_base``, so variable frame rate is handled) is
    ``<= t``; a ``t`` before the first frame takes the first frame. A clip with fewer
    frames than asked therefore repeats frames, each for the share of time it is shown.

Seeking
    A long file is never decoded whole. For each sampled time the reader seeks to the
    keyframe at or before it and decodes forward to it; when no keyframe lies between
    the current position and the next time (or, without a keyframe index, when the next
    time is less than a couple of seconds ahead) it keeps decoding instead of seeking.
    Windows holding only a few frames (``<= 4 * num_frames``) are decoded sequentially.
    Only the frames that are kept are converted to RGB.

Orientation
    Rotation/flip metadata (the display matrix of mp4/mov/mkv/webm) is applied the way
    the ``ffmpeg`` command line applies it, so frames come out upright as a player
    shows them. Image files honour their EXIF orientation.

Bounded work
    Decoding one clip costs at most about two passes over the file whatever its keyframe
    layout: when a seek lands no later than where decoding already stood (a file with one
    keyframe, or keyframes too sparse to help), seeking stops and the rest is decoded in one
    forward pass. On top of that every clip has a budget of decoded frames (twice the
    frames the header announces, at least :data:`MIN_FRAME_BUDGET`) and of wall time
    (``time_limit_s``); exceeding either raises :class:`VideoDecodeError`. Every decoded
    frame's size is checked against ``max_side`` (the size may change mid-stream) before it
    is converted, and with an output ``size`` each kept frame is resized right after its
    conversion, so memory holds ``num_frames`` small frames, not native ones.

Untrusted files
    Only real container formats are opened (:data:`CONTAINER_FORMATS`, FFmpeg's format whitelist: no
    raw elementary streams, playlists or image sequences) from local files only. An mp4/mov whose boxes
    declare more samples than its data, its duration or :data:`encoder.video.mp4_boxes.MAX_SAMPLES`
    allow is refused before FFmpeg indexes them. The decoder refuses a frame of more than
    ``max_side * max_side`` pixels before allocating it (its ``max_pixels`` option; ``max_side``
    defaults to :data:`DEFAULT_MAX_SIDE`) and runs at most :data:`MAX_DECODE_THREADS` threads. The wall
    time is checked on every packet, header scans included, and :data:`MAX_FRAMELESS_PACKETS` packets
    in a row that decode to no frame end decoding.

Errors
    A missing file raises ``FileNotFoundError``; a file from which no clip can be
    decoded (not a video, no video stream, empty, random bytes, truncated with nothing
    decodable, over its budget, a frame larger than ``max_side``) raises
    :class:`VideoDecodeError`; bad arguments raise ``ValueError``.
    A partly decodable file (cut or damaged in the middle) yields frames from its
    decodable part: sampled times that cannot be reached reuse the nearest decoded frame.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import time as _time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar, Union

import av
import numpy as np
from av.sidedata.sidedata import SideDataContainer as _SideDataContainer
from av.sidedata.sidedata import Type as _SideDataType
from PIL import Image, ImageOps

from encoder.common.errors import PrismVlmError
from encoder.video.mp4_boxes import declared_sample_problem

__all__ = [
    "CONTAINER_FORMATS",
    "DEFAULT_MAX_SIDE",
    "DEFAULT_TIME_LIMIT_S",
    "IMAGE_SUFFIXES",
    "MAX_DECODE_THREADS",
    "MAX_FRAMELESS_PACKETS",
    "MAX_NUM_FRAMES",
    "MAX_SCAN_PACKETS",
    "MAX_SIZE",
    "MIN_FRAME_BUDGET",
    "VIDEO_SUFFIXES",
    "VideoDecodeError",
    "center_crop",
    "check_num_frames",
    "check_size",
    "decode_frames",
    "load_clip",
    "open_video",
    "packet_time_span",
    "pick_uniformly",
    "resize_shorter_side",
    "sample_times",
    "stream_duration",
    "stream_start",
    "video_stream",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

MAX_NUM_FRAMES = 4096
"""Largest accepted ``num_frames``."""
MAX_SIZE = 4096
"""Largest accepted output ``size`` (pixels)."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
"""File suffixes read as still images (with PIL); everything else is read as video."""
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v", ".mpg", ".mpeg")
"""File suffixes taken as videos when a folder is listed (features, captioning) and offered by the app."""

# Decode sequentially (at most one initial seek) when the window holds at most this many
# frames per sampled frame.
_SEQUENTIAL_FRAMES_PER_SAMPLE = 4
# Without a keyframe index, keep decoding forward when the next time is this close.
_FORWARD_DECODE_SECONDS = 2.0
# Guards so that damaged or adversarial files can never make the reader loop forever.
_MAX_CONSECUTIVE_DECODE_ERRORS = 32
MIN_FRAME_BUDGET = 10_000
"""Smallest per-clip budget of decoded frames (the budget is twice the frames the header announces)."""
DEFAULT_TIME_LIMIT_S = 600.0
"""Default wall-time budget for decoding one clip, in seconds."""
DEFAULT_MAX_SIDE = 8192
"""Default largest frame width or height, in pixels (8K video passes; a larger frame is refused before it is decoded)."""
MAX_DECODE_THREADS = 4
"""Most threads one decoder runs (each frame thread holds a frame of its own)."""
MAX_FRAMELESS_PACKETS = 10_000
"""Packets in a row that decode to no frame before decoding gives up (real streams give a frame for
nearly every packet; a file of empty packets would otherwise be read to its end)."""
CONTAINER_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,gif,mpeg,mpegts,flv,ogg,asf,nut,wav,mp3"
"""The demuxers a file may be opened with (FFmpeg's ``format_whitelist``; the audio ones so that an audio
file is told it has no video stream)."""
_FORMAT_NAMES = "mp4, mov, mkv, webm, avi, gif, mpeg, ts, flv, ogg, asf, nut"
MAX_SCAN_PACKETS = 1_000_000
"""Most packets read to measure a stream whose header gives no duration (hours of video)."""
_MAX_SEEK_RETRIES = 3
_TIME_EPS = 1e-6
# FFmpeg's EINVAL: av.error.ArgumentError from PyAV 17, av.error.ValueError before it
_INVALID_ARGUMENT = getattr(av.error, "ArgumentError", None) or av.error.ValueError
_FORMAT_OPTIONS = {"protocol_whitelist": "file,crypto,data", "format_whitelist": CONTAINER_FORMATS}

Source = Union[str, os.PathLike, np.ndarray, Image.Image, Sequence]
T = TypeVar("T")


class VideoDecodeError(PrismVlmError, RuntimeError):
    """Raised when a file exists but no clip can be decoded from it.

    Attributes:
        path: the file that could not be decoded.
        reason: why, in words (e.g. ``"no video stream"``).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video '{self.path}': {reason}")


# ----------------------------------------------------------------------------- public API


def load_clip(
    source: Source,
    num_frames: int = 16,
    size: int | None = 288,
    start: float | None = None,
    end: float | None = None,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
) -> np.ndarray:
    """Load ``num_frames`` uniformly sampled frames as a square RGB clip.

    Args:
        source: one of
            - a path (``str`` or ``os.PathLike``) to a video file (mp4, mov, webm, mkv,
              avi, gif, ...) or to an image file (suffix in :data:`IMAGE_SUFFIXES`; the
              image becomes a one-frame clip repeated ``num_frames`` times);
            - a numpy array ``[T, H, W, 3]`` or ``[H, W, 3]``, uint8 in 0-255 or float in
              ``[0, 1]``;
            - a PIL image, or a list/tuple of PIL images and/or ``[H, W, 3]`` arrays.
        num_frames: T, the number of frames returned (1 to :data:`MAX_NUM_FRAMES`).
        size: output side length; each frame's shorter side is resized to ``size``
            (bilinear, antialiased) and the centre ``size x size`` square is kept.
            ``None`` keeps the native resolution (no resize, no crop; in-memory frames
            of another size than the first are resized to the first one's size).
        start: window start in seconds from the beginning of the video (videos only).
        end: window end in seconds (videos only). An ``end`` past the end of the video is
            clamped to the video's end; a ``start`` at or past the end is a ValueError.
        max_side: videos only: a frame wider or taller than this many pixels (or of more than
            ``max_side ** 2`` pixels, refused before it is decoded) is a VideoDecodeError (None: no limit).
        time_limit_s: videos only: wall-time budget for decoding, in seconds (None: none).

    Returns:
        float32 array ``[T, size, size, 3]`` (``[T, H, W, 3]`` when ``size`` is None),
        RGB, values in ``[0, 1]``, frames in time order.

    Raises:
        ValueError: bad arguments or a malformed array source.
        FileNotFoundError: ``source`` is a path that does not exist.
        VideoDecodeError: the file exists but no clip can be decoded from it.
    """
    num_frames = check_num_frames(num_frames)
    if size is not None:
        size = check_size(size)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            _reject_window(start, end, "an image file")
            frames = pick_uniformly([_read_image(path)], num_frames)
        else:
            frames, _ = _decode_frames_with_stats(
                path, num_frames, start, end, size=size, max_side=max_side, time_limit_s=time_limit_s
            )
    else:
        _reject_window(start, end, "in-memory frames")
        frames = pick_uniformly(_frames_from_memory(source), num_frames)

    return _to_clip(frames, size)


def decode_frames(
    path: str | os.PathLike,
    num_frames: int,
    start: float | None = None,
    end: float | None = None,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
) -> list[np.ndarray]:
    """Decode the frames displayed at ``num_frames`` uniformly spaced times of a video.

    Seek-based: see the module docstring for the sampling and seeking rules.

    Args:
        path: video file.
        num_frames: number of frames to return (1 to :data:`MAX_NUM_FRAMES`).
        start, end: optional window in seconds from the beginning of the video; ``end``
            past the end of the video is clamped, ``start`` at or past it is an error.
        max_side: a frame wider or taller than this (or of more than ``max_side ** 2`` pixels) is a
            VideoDecodeError (None: no limit).
        time_limit_s: wall-time budget in seconds (None: none).

    Returns:
        ``num_frames`` uint8 RGB arrays ``[H, W, 3]`` at native resolution, rotation
        metadata applied (so ``H, W`` are the displayed height and width). A frame used
        for several times appears as the same array object at each of them.

    Raises:
        ValueError: bad arguments.
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: no frame can be decoded from the file, or it exceeds a budget or ``max_side``.
    """
    frames, _ = _decode_frames_with_stats(path, num_frames, start, end, max_side=max_side, time_limit_s=time_limit_s)
    return frames


def sample_times(start: float, end: float, num_frames: int) -> np.ndarray:
    """Times uniformly spread over ``[start, end]``: the centres of ``num_frames`` equal segments.

    Returns:
        float64 array ``[num_frames]``, ``start + (i + 0.5) * (end - start) / num_frames``.
    """
    num_frames = check_num_frames(num_frames)
    start, end = float(start), float(end)
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        raise ValueError(f"need finite start <= end, got start={start}, end={end}")
    return start + (np.arange(num_frames, dtype=np.float64) + 0.5) * ((end - start) / num_frames)


def resize_shorter_side(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the shorter side becomes ``size``, keeping the aspect ratio.

    Bilinear, antialiased when shrinking (PIL). The longer side is rounded to the
    nearest pixel.

    Args:
        frame: ``[H, W, 3]``, uint8 (0-255) or float (0-1).
        size: target length of the shorter side.

    Returns:
        ``[h, w, 3]`` with ``min(h, w) == size``; uint8 in, uint8 out; float in, float32 out.
    """
    size = check_size(size)
    _check_frame_shape(frame, "frame")
    height, width = frame.shape[:2]
    scale = size / min(height, width)
    new_h = size if height <= width else max(size, round(height * scale))
    new_w = size if width < height else max(size, round(width * scale))
    if (new_h, new_w) == (height, width):
        return frame if frame.dtype == np.uint8 else frame.astype(np.float32, copy=False)
    return _pil_resize(frame, new_w, new_h)


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Keep the centre ``size x size`` square of every frame.

    Args:
        frames: ``[T, H, W, C]`` with ``H, W >= size``.
        size: side of the square.

    Returns:
        ``[T, size, size, C]`` (a view of ``frames``).
    """
    size = check_size(size)
    if frames.ndim != 4:
        raise ValueError(f"center_crop expects frames [T, H, W, C], got shape {frames.shape}")
    height, width = frames.shape[1:3]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from frames of {height}x{width}")
    top = (height - size) // 2
    left = (width - size) // 2
    return frames[:, top : top + size, left : left + size]


# ----------------------------------------------------------------------------- argument checks


def check_num_frames(num_frames: int) -> int:
    """``num_frames`` as an int in ``[1, MAX_NUM_FRAMES]``; anything else is a ValueError."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise ValueError(f"num_frames must be an int, got {num_frames!r}")
    if not 1 <= num_frames <= MAX_NUM_FRAMES:
        raise ValueError(f"num_frames must be in [1, {MAX_NUM_FRAMES}], got {num_frames}")
    return int(num_frames)


def check_size(size: int) -> int:
    """A frame ``size`` as an int in ``[1, MAX_SIZE]``; anything else is a ValueError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an int or None, got {size!r}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [1, {MAX_SIZE}], got {size}")
    return int(size)


def _check_window(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """Validate a user window (seconds from the clip start) before the clip length is known."""
    for name, value in (("start", start), ("end", end)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite, non-negative number of seconds, got {value}")
    if start is not None and end is not None and not start < end:
        raise ValueError(f"need start < end, got start={start}, end={end}")
    return (None if start is None else float(start)), (None if end is None else float(end))


def _reject_window(start: float | None, end: float | None, what: str) -> None:
    if start is not None or end is not None:
        raise ValueError(f"start/end windows apply to video files, not to {what}")


def _check_frame_shape(frame: np.ndarray, what: str) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", type(frame).__name__)
        raise ValueError(f"{what} must be an array [H, W, 3], got {shape}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"{what} has an empty spatial size: {frame.shape}")


# ----------------------------------------------------------------------------- in-memory sources


def _frames_from_memory(source: object) -> list[np.ndarray]:
    """Validate an in-memory source. -> list of ``[H, W, 3]`` frames, uint8 or float32."""
    if isinstance(source, Image.Image):
        return [_pil_to_array(source)]
    if isinstance(source, np.ndarray):
        if source.ndim == 3:
            source = source[None]
        if source.ndim != 4 or source.shape[-1] != 3:
            raise ValueError(f"frame array must have shape [T, H, W, 3] or [H, W, 3] (RGB), got {source.shape}")
        if 0 in source.shape:
            raise ValueError(f"frame array is empty: shape {source.shape}")
        return list(_check_pixel_values(source, "frame array"))
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("frame list is empty")
        frames = []
        for i, item in enumerate(source):
            if isinstance(item, Image.Image):
                frames.append(_pil_to_array(item))
            elif isinstance(item, np.ndarray):
                _check_frame_shape(item, f"frame {i}")
                frames.append(_check_pixel_values(item, f"frame {i}"))
            else:
                raise ValueError(f"frame {i} must be a PIL image or a numpy array, got {type(item).__name__}")
        return frames
    raise ValueError(
        "source must be a path, a numpy array [T, H, W, 3] / [H, W, 3], a PIL image or a list of "
        f"PIL images / arrays; got {type(source).__name__}"
    )


def _check_pixel_values(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 passes through; float must be finite and in [0, 1] (-> float32); others are errors."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"float {what} must have values in [0, 1], got range [{low:.4g}, {high:.4g}]")
        return np.clip(array, 0.0, 1.0).astype(np.float32, copy=False)
    raise ValueError(f"{what} must be uint8 (0-255) or float (0-1), got dtype {array.dtype}")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """-> uint8 ``[H, W, 3]`` RGB."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _read_image(path: Path) -> np.ndarray:
    """Read an image file upright (EXIF orientation applied). -> uint8 ``[H, W, 3]``."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_array(ImageOps.exif_transpose(image))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoDecodeError(path, f"not a readable image ({exc})") from exc


def pick_uniformly(frames: Sequence[T], num_frames: int) -> list[T]:
    """``num_frames`` of ``frames`` picked uniformly, the one shown at each segment centre (repeating
    frames when there are fewer): what :func:`load_clip` does with in-memory frames, so that a caller can
    decode only the frames it will keep."""
    count = len(frames)
    indices = np.minimum(((np.arange(num_frames) + 0.5) * count / num_frames).astype(np.int64), count - 1)
    return [frames[i] for i in indices]


# ----------------------------------------------------------------------------- resize / clip assembly


def _pil_resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear (antialiased) resize of ``[H, W, 3]`` to ``[height, width, 3]``, keeping the dtype kind."""
    if frame.dtype == np.uint8:
        image = Image.fromarray(np.ascontiguousarray(frame))
        return np.array(image.resize((width, height), Image.Resampling.BILINEAR))
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(frame[..., c], dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in range(frame.shape[2])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _to_float(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) * np.float32(1.0 / 255.0)
    return frame.astype(np.float32, copy=False)


def _to_clip(frames: list[np.ndarray], size: int | None) -> np.ndarray:
    """``T`` frames ``[H_i, W_i, 3]`` -> float32 ``[T, size, size, 3]`` in [0, 1] (native size if None)."""
    if size is None:
        height, width = frames[0].shape[:2]
        frames = [f if f.shape[:2] == (height, width) else _pil_resize(f, width, height) for f in frames]
        return np.stack([_to_float(f) for f in frames])
    resized: dict[int, np.ndarray] = {}  # repeated frames are resized once
    out = np.empty((len(frames), size, size, 3), dtype=np.float32)
    for i, frame in enumerate(frames):
        key = id(frame)
        if key not in resized:
            resized[key] = _to_float(center_crop(resize_shorter_side(frame, size)[None], size)[0])
        out[i] = resized[key]
    return out


# ----------------------------------------------------------------------------- video decoding


@dataclass
class _DecodeStats:
    """What the reader did (for tests and benchmarks)."""

    times: np.ndarray  # sampled times, seconds of stream time, [num_frames]
    sequential: bool = False  # decoded forward from the first time (at most one seek)
    seeks: int = 0
    frames_decoded: int = 0
    frames_converted: int = 0  # frames converted to RGB
    damaged: bool = False  # met undecodable or truncated data
    fallback: bool = False  # seeking gave nothing, so the file was re-read from its start
    seeking_stopped: bool = False  # a seek landed no later than decoding stood: the rest went forward
    frame_budget: int = MIN_FRAME_BUDGET  # decoded frames allowed for this clip, all passes together
    deadline: float = math.inf  # time.monotonic() after which decoding stops with an error


class _KeyframeIndex:
    """Keyframe lookup in the container's seek index.

    Only containers whose index lists every keyframe are trusted: mp4/mov and avi
    (complete sample index), matroska/webm (cues, once the first seek has read them).
    Other demuxers (e.g. MPEG-TS) index only the places they happened to read.
    ``stream.index_entries`` is read lazily (binary search), so a long file's index is
    never copied into Python objects.
    """

    _MAX_WALK = 2000  # entries to walk back from a time to its keyframe

    def __init__(self, stream: av.video.stream.VideoStream, trusted: bool):
        # PyAV 17 exposes the index; on older releases every lookup answers "unknown"
        self._entries = getattr(stream, "index_entries", None) if trusted else None
        self._time_base = stream.time_base

    def keyframe_before(self, time: float) -> float | None:
        """Time of the last indexed keyframe at or before ``time``; None if unknown."""
        entries = self._entries
        try:
            if entries is None or len(entries) < 2:
                return None
            stamp = math.floor(Fraction(time) / self._time_base)
            if entries[len(entries) - 1].timestamp < stamp:
                return None
            index = bisect.bisect_right(entries, stamp, key=lambda entry: entry.timestamp) - 1
            for i in range(index, max(index - self._MAX_WALK, -1), -1):
                if entries[i].flags & 1:  # AVINDEX_KEYFRAME
                    return float(entries[i].timestamp * self._time_base)
        except (TypeError, IndexError, av.error.FFmpegError):
            return None
        return None


@dataclass
class _StreamInfo:
    """Timing facts about the video stream, in seconds of stream time."""

    start: float  # presentation time where the clip starts
    duration: float
    fps: float | None
    can_seek: bool
    indexed: bool  # the container's index lists every keyframe (see _KeyframeIndex)


def _decode_frames_with_stats(
    path: str | os.PathLike,
    num_frames: int,
    start: float | None = None,
    end: float | None = None,
    *,
    size: int | None = None,
    max_side: int | None = DEFAULT_MAX_SIDE,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
) -> tuple[list[np.ndarray], _DecodeStats]:
    """:func:`decode_frames` plus a record of how the frames were obtained. With ``size``, each
    kept frame is resized (shorter side) and centre-cropped to ``[size, size, 3]`` right after its
    conversion, exactly as :func:`load_clip` would afterwards."""
    num_frames = check_num_frames(num_frames)
    start, end = _check_window(start, end)
    _check_limits(max_side, time_limit_s)
    began = _time.monotonic()
    path = Path(path)
    _check_video_file(path)
    deadline = began + time_limit_s if time_limit_s is not None else math.inf

    with _open(path, max_side) as container:
        stream = _video_stream(container, path)
        info = _stream_info(container, stream, path, deadline)
        window = _resolve_window(info, start, end, path)
        times = sample_times(*window, num_frames)
        announced = int(info.duration * info.fps) if info.fps else 0
        stats = _DecodeStats(times=times, frame_budget=max(MIN_FRAME_BUDGET, 2 * announced), deadline=deadline)
        convert = _Converter(path, size, max_side)
        window_frames = (window[1] - window[0]) * info.fps if info.fps else math.inf
        stats.sequential = not info.can_seek or window_frames <= _SEQUENTIAL_FRAMES_PER_SAMPLE * num_frames
        # Frame threads pay off on long forward runs, but are refilled after every seek.
        set_threads(stream, "AUTO" if stats.sequential else "SLICE")
        frames = _read_at_times(container, stream, info, times, stats, convert, reseek=not stats.sequential)

    if frames is None and not stats.sequential:
        # Seeking gave nothing (odd index, damaged file): one plain pass from the start.
        stats.fallback = stats.sequential = True
        with _open(path, max_side) as container:
            stream = _video_stream(container, path)
            set_threads(stream, "AUTO")
            info.can_seek = False
            frames = _read_at_times(container, stream, info, times, stats, convert, reseek=False)
    if frames is None:
        raise VideoDecodeError(path, "no decodable video frames")
    if stats.damaged:
        logger.warning("%s is damaged or truncated; frames come from its decodable part", path)
    return frames, stats


def _check_limits(max_side: int | None, time_limit_s: float | None) -> None:
    """ValueError unless ``max_side`` is a positive int or None and ``time_limit_s`` a positive number or None."""
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1
    ):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")
    if time_limit_s is not None and not (isinstance(time_limit_s, (int, float)) and time_limit_s > 0):
        raise ValueError(f"time_limit_s must be a positive number of seconds or None, got {time_limit_s!r}")


def _check_video_file(path: Path) -> None:
    """FileNotFoundError for a missing path; VideoDecodeError for a folder or an empty file."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty")


def open_video(path: str | os.PathLike, max_side: int | None = DEFAULT_MAX_SIDE) -> av.container.InputContainer:
    """Open a local video file with PyAV: local protocols and :data:`CONTAINER_FORMATS` only, an mp4's
    declared sample counts checked first, decoders that refuse frames over ``max_side ** 2`` pixels.
    Raises VideoDecodeError."""
    return _open(Path(path), max_side)


def set_threads(stream: av.video.stream.VideoStream, thread_type: str) -> None:
    """Decode ``stream`` with ``thread_type`` threading ("AUTO", "SLICE", ...) and at most
    :data:`MAX_DECODE_THREADS` threads."""
    stream.thread_type = thread_type
    stream.thread_count = min(os.cpu_count() or 1, MAX_DECODE_THREADS)


def _open(path: Path, max_side: int | None = DEFAULT_MAX_SIDE) -> av.container.InputContainer:
    try:
        problem = declared_sample_problem(path)
    except OSError as exc:
        raise VideoDecodeError(path, _describe(exc)) from exc
    if problem:
        raise VideoDecodeError(path, f"impossible sample tables: {problem}")
    options = dict(_FORMAT_OPTIONS)
    if max_side is not None:
        options["max_pixels"] = str(int(max_side) ** 2)  # decoders refuse larger frames before allocating them
    try:
        # Local files only: a playlist (m3u8, concat, ...) must not reach out to the network.
        container = av.open(str(path), mode="r", options=options)
    except _INVALID_ARGUMENT as exc:  # what FFmpeg answers for a format off the whitelist
        raise VideoDecodeError(path, f"not a video container this reader opens ({_FORMAT_NAMES})") from exc
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(path, _describe(exc)) from exc
    for stream in container.streams.video:
        if stream.codec_context is not None and max_side is not None:
            stream.codec_context.options = {**stream.codec_context.options, "max_pixels": options["max_pixels"]}
    return container


def _describe(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__})"
    return f"{exc} ({type(exc).__name__})"


def video_stream(container: av.container.InputContainer, path: str | os.PathLike) -> av.video.stream.VideoStream:
    """The video stream a clip is decoded from (the app's header check reads the same one): the
    first video stream, a real video preferred over an attached picture (cover art).
    Raises VideoDecodeError when there is none."""
    return _video_stream(container, Path(path))


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    streams = [s for s in container.streams.video if s.codec_context is not None]
    if not streams:
        raise VideoDecodeError(path, "no video stream (audio-only or not a video file)")
    streams.sort(key=lambda s: bool(s.disposition & av.stream.Disposition.attached_pic))
    return streams[0]


def _stream_info(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: Path,
    deadline: float = math.inf,
) -> _StreamInfo:
    start = stream_start(container, stream)
    duration = stream_duration(container, stream)

    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate and 0 < float(rate) < 1000 else None
    if fps is None and duration and stream.frames:
        fps = stream.frames / duration

    if duration is None:
        with _open(path) as scan:
            span = packet_time_span(scan, _video_stream(scan, path), deadline=deadline, max_packets=MAX_SCAN_PACKETS)
        if span is None:
            raise VideoDecodeError(path, "no timestamped video packets")
        start, duration = span

    formats = set(container.format.name.split(","))
    can_seek = not formats & {"gif", "image2", "image2pipe"}
    indexed = bool(formats & {"mov", "mp4", "avi", "matroska", "webm"})
    return _StreamInfo(start=start, duration=duration, fps=fps, can_seek=can_seek, indexed=indexed)


def stream_start(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """Presentation time, in seconds, where ``stream`` starts (where a clip's window is counted from):
    the stream's own start time, else the container's, else 0."""
    if stream.start_time is not None:
        return float(stream.start_time * (stream.time_base or Fraction(1, av.time_base)))
    if container.start_time is not None:
        return container.start_time / av.time_base
    return 0.0


def stream_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """Length of ``stream`` in seconds as the header tells it, counted from :func:`stream_start`: the
    length the decoder samples a clip from and the app checks against its duration limit.

    The rule: the stream's own duration when the header gives one (mp4/mov, MPEG-TS, ...); else
    (Matroska/WebM, ...) the container's end minus the stream's start. The container ends at its
    start time plus its duration, except in Matroska/WebM, whose segment duration is counted from
    timestamp 0 rather than from the first frame, so there it ends at its duration. (A stream that
    ends before other streams of the container is then taken to last to the container's end.)

    None when this gives no finite, positive length: measure the packets then (:func:`packet_time_span`).
    """
    duration = None
    if stream.duration:
        duration = float(stream.duration * (stream.time_base or Fraction(1, av.time_base)))
    elif container.duration:
        start = stream_start(container, stream)
        end = container.duration / av.time_base
        if not {"matroska", "webm"} & set(container.format.name.split(",")):
            end += container.start_time / av.time_base if container.start_time is not None else start
        duration = end - start
    if duration is None or not math.isfinite(duration) or duration <= 0:
        return None
    return duration


def packet_time_span(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    *,
    deadline: float = math.inf,
    max_packets: int | None = None,
    max_duration_s: float | None = None,
) -> tuple[float, float] | None:
    """``(start, duration)`` of ``stream`` in seconds from its packet timestamps (demuxing only, no
    decoding; a truncated file counts its readable part). None when no packet has a timestamp.

    Bounded: past ``deadline`` (a ``time.monotonic()``) or ``max_packets`` packets it raises
    VideoDecodeError; once the span exceeds ``max_duration_s`` it stops and returns that span (the
    caller refuses it as too long)."""
    first = last = None
    time_base = stream.time_base or Fraction(1, av.time_base)
    path = getattr(container, "name", "?")
    count = 0
    try:
        for packet in container.demux(stream):
            count += 1
            if max_packets is not None and count > max_packets:
                raise VideoDecodeError(path, f"more than {max_packets} video packets to scan")
            if _time.monotonic() > deadline:
                raise VideoDecodeError(path, f"scanning its packets took longer than its time limit ({count} read)")
            if max_duration_s is not None and last is not None and last - first > max_duration_s:
                break
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                continue
            begin = float(stamp * time_base)
            finish = begin + float((packet.duration or 0) * time_base)
            first = begin if first is None else min(first, begin)
            last = finish if last is None else max(last, finish)
    except av.error.FFmpegError:
        pass  # truncated: use what was readable
    if first is None:
        return None
    return first, max(last - first, 0.0)


def _resolve_window(info: _StreamInfo, start: float | None, end: float | None, path: Path) -> tuple[float, float]:
    """User window (seconds from the clip start) -> absolute stream times ``(t0, t1)``."""
    begin = 0.0 if start is None else start
    finish = info.duration if end is None else min(end, info.duration)
    if begin > 0 and begin >= info.duration:
        raise ValueError(f"start={begin}s is at or past the end of {str(path)!r} ({info.duration:.3f}s long)")
    return info.start + begin, info.start + max(finish, begin)


class _FrameCursor:
    """Walks the decoded frames of one stream in presentation order; can seek.

    Tolerates damaged data: undecodable packets are skipped (up to a limit of
    consecutive failures), a demuxing error ends the stream like an end of file. Decoding
    more than ``stats.frame_budget`` frames in all, or past ``stats.deadline``, raises
    VideoDecodeError. It notes where good decoding stopped (:meth:`failure_before`) for readers
    that must not take a frame held over damage, or past a cut, for the frame displayed.
    """

    _END = object()

    def __init__(self, container, stream, info: _StreamInfo, stats: _DecodeStats, path: Path):
        self._container = container
        self._stream = stream
        self._info = info
        self._stats = stats
        self._path = path
        self._step = 1.0 / info.fps if info.fps else 0.04
        self._reset()

    def _reset(self, origin: float | None = None) -> None:
        self._frames = self._decoded_frames()
        self._shown = None  # (time, frame): the frame on screen at the last asked time
        self._ahead = None  # (time, frame) or _END: the next frame, not yet consumed
        self._last_time = None
        self._origin = self._info.start if origin is None else origin  # where decoding (re)started
        self._good_until = None  # end of display of the last decoded frame since (re)starting
        self._damage_at = None  # _good_until when damaged data was first met since (re)starting

    def use_stats(self, stats: _DecodeStats) -> None:
        """Count work (and check budgets) in ``stats`` from now on (a reader keeping one cursor
        across several clips gives each its own)."""
        self._stats = stats

    @property
    def position(self) -> float:
        """Time of the next frame to be consumed (or of the last one, at the end)."""
        if self._ahead is not None and self._ahead is not self._END:
            return self._ahead[0]
        if self._shown is not None:
            return self._shown[0]
        return self._info.start

    def seek(self, time: float) -> bool:
        """Seek to the keyframe at or before ``time``. -> False if the container refused."""
        offset = math.floor(Fraction(max(time, self._info.start)) / self._stream.time_base)
        try:
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OverflowError) as exc:
            logger.debug("seek to %.3fs failed: %s", time, exc)
            return False
        self._stats.seeks += 1
        self._reset(origin=max(time, self._info.start))
        return True

    def frame_at(self, time: float) -> av.VideoFrame | None:
        """The frame displayed at ``time`` (the last with time <= ``time``); the first frame
        after ``time`` if none precedes it; None if nothing can be decoded."""
        while self._ahead is None or (self._ahead is not self._END and self._ahead[0] <= time + _TIME_EPS):
            if self._ahead is not None:
                self._shown = self._ahead
            self._ahead = next(self._frames, self._END)
        if self._shown is not None:
            return self._shown[1]
        return None if self._ahead is self._END else self._ahead[1]

    def failure_before(self, time: float, end_slack: float) -> float | None:
        """Where good decoding ended, when it ended before ``time`` (asked of :meth:`frame_at` just
        before), so that the frame returned for ``time`` may not be the one displayed; else None.

        Decoding ended before ``time`` when, since the last seek, damaged data (an undecodable
        packet, a read error, a frame the decoder flags as corrupt) was met after a good frame and
        ``time`` lies past that frame's display, or the stream ended more than ``end_slack`` seconds before ``time`` (cut short:
        a truncated file reads like a clean end of file), or nothing was decodable. Damage before
        the first frame decoded since the last seek is skipped like junk before a keyframe.
        Returns stream time (seconds): the end of display of the last good frame.
        """
        if self._damage_at is not None and time >= self._damage_at - _TIME_EPS:
            return self._damage_at
        if self._ahead is self._END:
            if self._good_until is None:
                return self._origin
            if time > self._good_until + end_slack:
                return self._good_until
        return None

    def _note_damage(self) -> None:
        self._stats.damaged = True
        if self._damage_at is None and self._good_until is not None:
            self._damage_at = self._good_until

    def first_time(self) -> float | None:
        """Time of the first frame decodable from the current position (None at the end)."""
        if self._ahead is None:
            self._ahead = next(self._frames, self._END)
        if self._shown is not None:
            return self._shown[0]
        return None if self._ahead is self._END else self._ahead[0]

    def _decoded_frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """Yield ``(time, frame)`` from the current position on, tolerating damage. The deadline is
        checked on every packet; :data:`MAX_FRAMELESS_PACKETS` packets in a row without a frame end it."""
        packets = self._container.demux(self._stream)
        failures = frameless = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError:  # truncated or unreadable: end of stream
                self._note_damage()
                yield from self._timed(self._flush())
                return
            if _time.monotonic() > self._stats.deadline:
                raise VideoDecodeError(
                    self._path,
                    f"decoding took longer than its time limit ({self._stats.frames_decoded} frames decoded)",
                )
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self._note_damage()
                failures += 1
                if failures > _MAX_CONSECUTIVE_DECODE_ERRORS:
                    return
                continue
            failures = 0
            frameless = 0 if frames else frameless + 1
            if frameless > MAX_FRAMELESS_PACKETS:
                raise VideoDecodeError(
                    self._path,
                    f"{MAX_FRAMELESS_PACKETS} packets in a row decoded to no frame (damaged or hostile file)",
                )
            yield from self._timed(frames)

    def _flush(self) -> list[av.VideoFrame]:
        try:
            return self._stream.codec_context.decode(None)
        except av.error.FFmpegError:
            return []

    def _timed(self, frames: list[av.VideoFrame]) -> Iterator[tuple[float, av.VideoFrame]]:
        for frame in frames:
            stats = self._stats
            stats.frames_decoded += 1
            if stats.frames_decoded > stats.frame_budget:
                raise VideoDecodeError(
                    self._path,
                    f"decoding needed more than {stats.frame_budget} frames "
                    "(the header announces far fewer; damaged or hostile file)",
                )
            time = frame.time
            if time is None:  # no timestamp: assume the nominal frame step
                time = self._info.start if self._last_time is None else self._last_time + self._step
            self._last_time = time
            if frame.is_corrupt:  # decoded from damaged data (the decoder says so): not a good frame
                self._note_damage()
            else:
                shown_for = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
                self._good_until = time + (shown_for if shown_for > 0 else self._step)
            yield time, frame


def _read_at_times(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    info: _StreamInfo,
    times: np.ndarray,
    stats: _DecodeStats,
    convert: _Converter,
    *,
    reseek: bool,
) -> list[np.ndarray] | None:
    """RGB frames displayed at each of ``times`` (ascending), converted by ``convert``. -> uint8
    ``[H, W, 3]`` list, or None when nothing is decodable.

    ``reseek``: seek again between times whenever that skips decoding; otherwise decode
    forward from the first time (reached with at most one seek). A seek that lands no later
    than where decoding stood skipped nothing (one keyframe, or keyframes too sparse): from
    then on the clip is decoded forward, so the work stays within about two passes.
    """
    reader = _TimeReader(container, stream, info, stats, convert.path)
    return _fill_gaps(reader.read(times, stats, convert, reseek=reseek))


class _TimeReader:
    """Reads the frames displayed at ascending times through one :class:`_FrameCursor`, seeking
    only when that skips decoding. :func:`_read_at_times` reads one clip with it; the window
    reader (``encoder.video.windows``) keeps one across consecutive windows, so each window
    continues forward from where the previous one stopped.
    """

    def __init__(self, container, stream, info: _StreamInfo, stats: _DecodeStats, path: Path):
        self.cursor = _FrameCursor(container, stream, info, stats, path)
        self.info = info
        self.can_seek = info.can_seek
        self._keyframes = _KeyframeIndex(stream, trusted=info.indexed)
        self._started = False  # a time was read before: a seek landing no later skipped nothing
        self.failed: tuple[int, float] | None = None  # see read(end_slack=...)

    def read(
        self,
        times: np.ndarray,
        stats: _DecodeStats,
        convert: _Converter,
        *,
        reseek: bool,
        end_slack: float | None = None,
    ) -> list[np.ndarray | None]:
        """Frames displayed at ``times`` (ascending, after any time read before), converted by
        ``convert``; None where nothing is decodable. Work is counted in ``stats``.

        ``reseek``: seek again between times whenever that skips decoding; otherwise decode
        forward from the first time (reached with at most one seek). A seek that lands no later
        than where decoding stood skipped nothing (one keyframe, or keyframes too sparse): from
        then on the file is decoded forward, so the work stays within about two passes.

        ``end_slack``: when given, stop at the first time that decoding did not reach (see
        :meth:`_FrameCursor.failure_before`) and record it in :attr:`failed` as ``(index of the
        time, stream time where good decoding ended)``; the times from there on are left None.
        """
        cursor = self.cursor
        cursor.use_stats(stats)
        self.failed = None
        out: list[np.ndarray | None] = [None] * len(times)
        last_frame = last_array = None
        for i, time in enumerate(times):
            if self.can_seek and (reseek or i == 0) and _worth_seeking(cursor.position, time, self._keyframes):
                stood = cursor.position
                self.can_seek = _seek_before(cursor, time, self.info)
                landed = cursor.first_time() if self.can_seek else None
                if (i > 0 or self._started) and landed is not None and landed <= stood + _TIME_EPS:
                    self.can_seek = False
                    stats.seeking_stopped = True
            frame = cursor.frame_at(time)
            if end_slack is not None:
                failed_at = cursor.failure_before(time, end_slack)
                if failed_at is not None:
                    self.failed = (i, failed_at)
                    break
            if frame is None:
                continue
            if frame is not last_frame:
                last_frame, last_array = frame, convert(frame)
                stats.frames_converted += 1
            out[i] = last_array
        self._started = True
        return out


def _worth_seeking(position: float, target: float, keyframes: _KeyframeIndex) -> bool:
    """Seek iff it skips decoding: a keyframe lies after ``position`` and at or before ``target``.

    Without an index: iff ``target`` is more than a couple of seconds ahead.
    """
    if target <= position + _TIME_EPS:
        return False
    keyframe = keyframes.keyframe_before(target)
    if keyframe is not None:
        return keyframe > position + _TIME_EPS
    return target - position > _FORWARD_DECODE_SECONDS


def _seek_before(cursor: _FrameCursor, time: float, info: _StreamInfo) -> bool:
    """Seek so that decoding resumes at or before ``time``. -> False if the container cannot seek.

    Demuxers seek by decode timestamps or by an inexact index (e.g. MPEG-TS) and may
    land after ``time``, or at the end of the stream; then the seek is retried from
    further back (a few times, doubling the distance).
    """
    target, margin = time, 1.0
    for _ in range(_MAX_SEEK_RETRIES + 1):
        if not cursor.seek(target):
            return False
        first = cursor.first_time()
        if (first is not None and first <= time + _TIME_EPS) or target <= info.start:
            break
        target, margin = max(info.start, time - margin), margin * 2
    return True


def _fill_gaps(frames: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """Times with no decodable frame take the nearest earlier one (else the nearest later)."""
    if all(f is None for f in frames):
        return None
    filled: list[np.ndarray] = []
    previous = next(f for f in frames if f is not None)
    for frame in frames:
        previous = previous if frame is None else frame
        filled.append(previous)
    return filled


# ----------------------------------------------------------------------------- colour and orientation


class _Converter:
    """Decoded frame -> uint8 RGB ``[H, W, 3]`` as displayed; the frame's size checked against
    ``max_side`` before conversion; resized and centre-cropped to ``[size, size, 3]`` right after
    it when ``size`` is given (None: native size)."""

    def __init__(self, path: Path, size: int | None, max_side: int | None):
        self.path, self.size, self.max_side = path, size, max_side

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.max_side is not None and max(frame.width, frame.height) > self.max_side:
            raise VideoDecodeError(
                self.path, f"a frame is {frame.width}x{frame.height}, over the limit of {self.max_side} px a side"
            )
        array = _upright_rgb(frame, self.path)
        if self.size is None:
            return array
        return center_crop(resize_shorter_side(array, self.size)[None], self.size)[0]


def _upright_rgb(frame: av.VideoFrame, path: Path) -> np.ndarray:
    """Decoded frame -> uint8 RGB ``[H, W, 3]`` as displayed (display matrix applied)."""
    try:
        array = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, ValueError) as exc:
        raise VideoDecodeError(path, f"cannot convert {frame.format.name} frames to RGB ({exc})") from exc
    return np.ascontiguousarray(_apply_display_matrix(array, _display_matrix(frame)))


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's 3x3 display matrix as 9 int32 (FFmpeg layout), or None."""
    try:
        # A container of our own, not ``frame.side_data``: the frame caches that one, which points back
        # at the frame, and the cycle kept every converted frame (and its decoded picture) alive until
        # the garbage collector ran: hundreds of native frames over a long video.
        side_data = _SideDataContainer(frame).get(_SideDataType.DISPLAYMATRIX)
    except (AttributeError, KeyError, ValueError):
        side_data = None
    if side_data is not None:
        raw = bytes(side_data)
        if len(raw) >= 36:
            return np.frombuffer(raw[:36], dtype=np.int32)
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation:
        # Pure counter-clockwise rotation, as av_display_rotation_set(-rotation) would write.
        radians = math.radians(rotation)
        c, s = round(math.cos(radians)), round(math.sin(radians))
        return np.array([c * 65536, -s * 65536, 0, s * 65536, c * 65536, 0, 0, 0, 1 << 30], dtype=np.int32)
    return None


def _apply_display_matrix(array: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """Rotate/flip ``[H, W, C]`` for display, following the ffmpeg CLI's autorotate rules.

    Only multiples of 90 degrees (with optional mirroring) are applied; other angles are
    left as decoded.
    """
    if matrix is None:
        return array
    m = matrix.astype(np.float64)
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return array
    # av_display_rotation_get: counter-clockwise angle; ffmpeg rotates the frame by its negative.
    theta = math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        # "cclock_flip" (transpose) if mirrored, else "clock".
        return array.transpose(1, 0, 2) if m[3] > 0 else np.rot90(array, k=-1)
    if abs(theta - 180) < 1:
        if m[0] < 0:
            array = array[:, ::-1]
        if m[4] < 0:
            array = array[::-1]
        return array
    if abs(theta - 270) < 1:
        # "clock_flip" (anti-transpose) if mirrored, else "cclock".
        return np.rot90(array, k=-1)[::-1] if m[3] < 0 else np.rot90(array, k=1)
    if abs(theta) < 1 and m[4] < 0:
        return array[::-1]
    return array
