"""Write small synthetic videos with PyAV for the decoder tests.

Frames carry their own index as a binary code so tests can tell exactly which frames a
reader returned: :func:`code_frame` draws the index as a 3 x 4 grid of dark/bright
cells over the top three quarters of the frame and a row of red, green, blue and white
patches in the bottom quarter (to check colour conversion); :func:`read_code` reads the
index back from a decoded frame.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODE_ROWS, CODE_COLS = 3, 4
MAX_CODE = 2 ** (CODE_ROWS * CODE_COLS) - 1
DARK, BRIGHT = 16, 235
PATCH_COLOURS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220], [235, 235, 235]], dtype=np.uint8)


def _cell_edges(length: int, parts: int) -> list[int]:
    return [round(i * length / parts) for i in range(parts + 1)]


def _layout(height: int, width: int) -> tuple[list[int], list[int], int]:
    code_height = height * 3 // 4
    return _cell_edges(code_height, CODE_ROWS), _cell_edges(width, CODE_COLS), code_height


def code_frame(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    """-> uint8 RGB ``[height, width, 3]`` showing ``index`` (0..4095) as a binary code."""
    if not 0 <= index <= MAX_CODE:
        raise ValueError(f"index {index} does not fit in {CODE_ROWS * CODE_COLS} bits")
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    rows, cols, code_height = _layout(height, width)
    for bit in range(CODE_ROWS * CODE_COLS):
        r, c = divmod(bit, CODE_COLS)
        frame[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = BRIGHT if (index >> bit) & 1 else DARK
    patch_cols = _cell_edges(width, len(PATCH_COLOURS))
    for p, colour in enumerate(PATCH_COLOURS):
        frame[code_height:, patch_cols[p] : patch_cols[p + 1]] = colour
    return frame


def _inner(array: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Central half of a cell (away from edges blurred by compression and chroma subsampling)."""
    dh, dw = (bottom - top) // 4, (right - left) // 4
    return array[top + dh : bottom - dh, left + dw : right - dw]


def read_code(frame: np.ndarray) -> int:
    """Index drawn by :func:`code_frame` in a decoded ``[H, W, 3]`` uint8 frame."""
    height, width = frame.shape[:2]
    rows, cols, _ = _layout(height, width)
    value = 0
    for bit in range(CODE_ROWS * CODE_COLS):
        r, c = divmod(bit, CODE_COLS)
        if _inner(frame, rows[r], rows[r + 1], cols[c], cols[c + 1]).mean() > (DARK + BRIGHT) / 2:
            value |= 1 << bit
    return value


def read_patch_colours(frame: np.ndarray) -> np.ndarray:
    """Mean RGB of the four colour patches of a decoded frame. -> float ``[4, 3]``."""
    height, width = frame.shape[:2]
    _, _, code_height = _layout(height, width)
    patch_cols = _cell_edges(width, len(PATCH_COLOURS))
    return np.array(
        [
            _inner(frame, code_height, height, patch_cols[p], patch_cols[p + 1]).reshape(-1, 3).mean(axis=0)
            for p in range(len(PATCH_COLOURS))
        ]
    )


def quadrant_frame(height: int = 48, width: int = 64) -> np.ndarray:
    """-> uint8 RGB frame that is bright in its top-left quadrant only (to check orientation)."""
    frame = np.full((height, width, 3), DARK, dtype=np.uint8)
    frame[: height // 2, : width // 2] = BRIGHT
    return frame


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 10,
    pts_ms: Sequence[int] | None = None,
    gop: int | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    codec_options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    container_format: str | None = None,
) -> Path:
    """Encode uint8 RGB frames ``[H, W, 3]`` into ``path`` (container from the suffix).

    Args:
        pts_ms: per-frame presentation times in milliseconds (variable frame rate);
            default: frame ``i`` at ``i / fps`` seconds.
        gop: keyframe interval in frames.
        rotation: display rotation, counter-clockwise degrees as PyAV's
            ``VideoStream.set_display_rotation`` takes it (what ``VideoFrame.rotation``
            reads back); ``hflip`` mirrors after rotating.
    """
    path = Path(path)
    frames = list(frames)
    height, width = frames[0].shape[:2]
    time_base = Fraction(1, 1000) if pts_ms is not None else Fraction(1, fps)
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        options = {"preset": "ultrafast"} if codec in ("libx264", "libx265") else {}
        if codec in ("libvpx", "libvpx-vp9"):
            options = {"deadline": "realtime", "cpu-used": "8"}
        if codec == "libx265":
            options["x265-params"] = "log-level=error"
        options.update(codec_options or {})
        stream.options = options
        rotate_in_header = (rotation is not None or hflip) and not hasattr(stream, "set_display_rotation")
        if rotate_in_header and path.suffix.lower() not in (".mp4", ".mov"):
            import pytest

            pytest.skip(f"PyAV {av.__version__} cannot write a display rotation into {path.suffix} files")
        if (rotation is not None or hflip) and not rotate_in_header:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        palette = _palette(frames) if pix_fmt == "pal8" else None
        for i, array in enumerate(frames):
            if palette is not None:
                frame = _pal8_frame(array, palette)
            else:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                if pix_fmt != "rgb24":
                    frame = frame.reformat(format=pix_fmt)
            frame.pts = pts_ms[i] if pts_ms is not None else i
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    if rotate_in_header:
        _write_tkhd_matrix(path, display_matrix(rotation or 0, hflip))
    return path


def display_matrix(rotation: float, hflip: bool = False) -> list[int]:
    """FFmpeg's display matrix (9 int32) for ``rotation`` counter-clockwise degrees, then a horizontal
    flip: what av_display_rotation_set and av_display_matrix_flip write."""
    radians = math.radians(rotation)
    cos, sin = math.cos(radians), math.sin(radians)
    matrix = [int(cos * 65536), int(-sin * 65536), 0, int(sin * 65536), int(cos * 65536), 0, 0, 0, 1 << 30]
    if hflip:
        for i in (0, 3, 6):
            matrix[i] = -matrix[i]
    return matrix


def _write_tkhd_matrix(path: Path, matrix: Sequence[int]) -> None:
    """Set the display matrix of an mp4/mov file's one track in place (its tkhd box, which the mov
    demuxer reads as the stream's display matrix): for PyAV releases before
    ``VideoStream.set_display_rotation``."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 0 or data.find(b"tkhd", at + 4) >= 0:
        raise ValueError(f"{path} needs exactly one tkhd box to set its rotation")
    version = data[at + 4]
    # after type: version+flags 4, creation and modification times, track id 4, reserved 4, duration,
    # reserved 8, layer 2, alternate group 2, volume 2, reserved 2
    times = 8 if version == 1 else 4
    offset = at + 4 + 4 + 2 * times + 4 + 4 + times + 8 + 8
    data[offset : offset + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))


def _palette(frames: list[np.ndarray]) -> np.ndarray:
    """Distinct RGB colours of ``frames`` (at most 256). -> uint8 ``[N, 3]``."""
    colours = np.unique(np.concatenate([f.reshape(-1, 3) for f in frames]), axis=0)
    if len(colours) > 256:
        raise ValueError(f"pal8 needs at most 256 colours, frames have {len(colours)}")
    return colours


def _pal8_frame(array: np.ndarray, colours: np.ndarray) -> av.VideoFrame:
    """RGB ``[H, W, 3]`` -> pal8 frame over the palette ``colours`` ``[N, 3]``."""
    indices = np.zeros(array.shape[:2], dtype=np.uint8)
    for k, colour in enumerate(colours):
        indices[(array == colour).all(axis=-1)] = k
    palette = np.zeros((256, 4), dtype=np.uint8)  # ARGB
    palette[: len(colours), 0] = 255
    palette[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((indices, palette), format="pal8")


def write_code_video(path: str | Path, num_frames: int, height: int = 48, width: int = 64, **kwargs) -> Path:
    """:func:`write_video` of ``num_frames`` :func:`code_frame` frames (frame ``i`` shows ``i``)."""
    return write_video(path, (code_frame(i, height, width) for i in range(num_frames)), **kwargs)


def write_audio_only(path: str | Path, seconds: float = 1.0, codec: str = "aac", rate: int = 16000) -> Path:
    """Write a file holding one audio stream (a sine tone) and no video."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        samples = int(seconds * rate)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
        fmt = stream.codec_context.codec.audio_formats[0].name if stream.codec_context.codec.audio_formats else "fltp"
        chunk = 1024
        for offset in range(0, samples, chunk):
            piece = tone[offset : offset + chunk]
            if fmt.startswith("s16"):
                piece = (piece * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(piece[None], format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = offset
            frame.time_base = Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decode_all(path: str | Path) -> tuple[list[float], list[np.ndarray]]:
    """Reference reader: every frame of the first video stream, in order, without seeking.

    Returns ``(times, frames)``: presentation times in seconds and uint8 RGB ``[H, W, 3]``
    frames exactly as stored (no rotation applied).
    """
    times, frames = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            times.append(float(frame.time))
            frames.append(frame.to_ndarray(format="rgb24"))
    return times, frames


def displayed_index(times: Sequence[float], t: float) -> int:
    """Index of the frame displayed at time ``t``: the last with time <= t (else the first)."""
    index = 0
    for i, frame_time in enumerate(times):
        if frame_time <= t + 1e-6:
            index = i
        else:
            break
    return index


def write_single_keyframe_video(path: str | Path, num_frames: int, fps: int = 100) -> Path:
    """A code video (frame i shows code i) whose only keyframe is frame 0, so seeking can never
    skip decoding: the layout that made the reader decode the file once per sampled time."""
    x264 = f"keyint={num_frames + 1}:min-keyint={num_frames + 1}:scenecut=0"
    return write_code_video(path, num_frames, fps=fps, gop=num_frames + 1, codec_options={"x264-params": x264})


def write_resolution_switch(path: str | Path, small: int = 64, large: int = 1600, frames_each: int = 20) -> Path:
    """An MPEG-TS file whose first half is ``small`` x ``small`` and whose second half is ``large``
    x ``large`` (two segments, times continuing at 10 fps): its header announces the small size."""
    path = Path(path)
    parts = []
    for index, side in enumerate((small, large)):
        part = path.with_name(f"{path.stem}.part{index}.ts")
        frames = [np.full((side, side, 3), 60 + 40 * index + 5 * (i % 4), np.uint8) for i in range(frames_each)]
        pts = [100 * (index * frames_each + i) for i in range(frames_each)]
        write_video(part, frames, pts_ms=pts, container_format="mpegts")
        parts.append(part)
    path.write_bytes(b"".join(part.read_bytes() for part in parts))
    for part in parts:
        part.unlink()
    return path


def truncated_copy(path: str | Path, out: str | Path, fraction: float = 0.5) -> Path:
    """Write the first ``fraction`` of the bytes of ``path`` to ``out`` (a file cut short)."""
    out = Path(out)
    data = Path(path).read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def corrupted_copy(path: str | Path, out: str | Path, at: float = 0.5, num_bytes: int = 1000, seed: int = 1) -> Path:
    """Write ``path`` to ``out`` with ``num_bytes`` random bytes in place of those at ``at`` (a
    fraction of the file's length): damage in the middle of an otherwise whole file."""
    out = Path(out)
    data = bytearray(Path(path).read_bytes())
    offset = int(len(data) * at)
    data[offset : offset + num_bytes] = (
        np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes()
    )
    out.write_bytes(bytes(data))
    return out
