"""Hostile video files, small and generated on the spot, for the decoder's and the app's defences
(tests/encoder/video/test_hostile_media.py, tests/apps, scripts/bench_hostile_inputs.py).

Each writer returns the path it wrote. The files are what an attacker uploads: they pass a
suffix check and most header checks, then cost memory or time out of proportion to their size.

- :func:`raw_h264_named_mp4`: a raw H.264 elementary stream (two 64x64 frames followed by
  access-unit delimiters) under an ``.mp4`` name; FFmpeg's raw ``h264`` demuxer takes it.
- :func:`sample_count_mp4`: a tiny mp4 whose ``stsz`` box declares millions of samples of one size
  with no table (``stts``/``stsc`` to match): the mov demuxer builds an index entry for each.
- :func:`size_switch_mjpeg_mkv`: an mkv whose header and first frames are 64x64 MJPEG and whose
  later frames are one huge grey JPEG (a few MB on disk, ``side * side`` bytes decoded).
- :func:`delimiter_packets_mkv`: an mkv holding one H.264 frame followed by packets that are only an
  access-unit delimiter each (they decode to no frame), without a duration in its header, as a
  live recording leaves it.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ACCESS_UNIT_DELIMITER = b"\x00\x00\x00\x01\x09\xf0"


def _h264_frames(count: int, side: int = 64) -> bytes:
    """``count`` frames of a raw H.264 (Annex B) stream, ``side x side``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 40 * index % 256, np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame.reformat(format="yuv420p")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def raw_h264_named_mp4(path: Path, delimiters: int = 800_000) -> Path:
    """Two 64x64 frames of raw H.264 then ``delimiters`` access-unit delimiters (6 bytes each)."""
    path.write_bytes(_h264_frames(2) + ACCESS_UNIT_DELIMITER * delimiters)
    return path


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, payload: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags) + payload)


def sample_count_mp4(
    path: Path, samples: int = 50_000_000, timescale: int = 1_000_000, ticks_per_sample: int = 1, data_bytes: int = 64
) -> Path:
    """A small mp4 whose one video track declares ``samples`` samples of 1 byte each (no size table),
    each lasting ``ticks_per_sample`` ticks of ``timescale``, all in one chunk of ``data_bytes``."""
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    duration = samples * ticks_per_sample
    mvhd = _full_box(
        b"mvhd",
        struct.pack(">IIII", 0, 0, timescale, duration)
        + struct.pack(">IH", 0x10000, 0x100)
        + bytes(10)
        + identity
        + bytes(24)
        + struct.pack(">I", 2),
    )
    tkhd = _full_box(
        b"tkhd",
        struct.pack(">IIIII", 0, 0, 1, 0, duration)
        + bytes(8)
        + struct.pack(">hhhH", 0, 0, 0, 0)
        + identity
        + struct.pack(">II", 64 << 16, 64 << 16),
        flags=3,
    )
    mdhd = _full_box(b"mdhd", struct.pack(">IIIIHH", 0, 0, timescale, duration, 0x55C4, 0))
    hdlr = _full_box(b"hdlr", struct.pack(">I", 0) + b"vide" + bytes(12) + b"video\x00")
    jpeg_entry = (
        bytes(6)
        + struct.pack(">H", 1)
        + bytes(16)
        + struct.pack(">HH", 64, 64)
        + struct.pack(">II", 0x480000, 0x480000)
        + struct.pack(">IH", 0, 1)
        + bytes(32)
        + struct.pack(">hh", 24, -1)
    )
    stsd = _full_box(b"stsd", struct.pack(">I", 1) + _box(b"jpeg", jpeg_entry))
    stts = _full_box(b"stts", struct.pack(">III", 1, samples, ticks_per_sample))
    stsc = _full_box(b"stsc", struct.pack(">IIII", 1, 1, samples, 1))
    stsz = _full_box(b"stsz", struct.pack(">II", 1, samples))
    mdat_payload = bytes(data_bytes)
    head = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2mp41")
    mdat = _box(b"mdat", mdat_payload)

    def moov(chunk_offset: int) -> bytes:
        stco = _full_box(b"stco", struct.pack(">II", 1, chunk_offset))
        stbl = _box(b"stbl", stsd + stts + stsc + stsz + stco)
        vmhd = _full_box(b"vmhd", bytes(8), flags=1)
        dinf = _box(b"dinf", _full_box(b"dref", struct.pack(">I", 1) + _full_box(b"url ", b"", flags=1)))
        minf = _box(b"minf", vmhd + dinf + stbl)
        mdia = _box(b"mdia", mdhd + hdlr + minf)
        return _box(b"moov", mvhd + _box(b"trak", tkhd + mdia))

    offset = len(head) + len(moov(0)) + 8
    path.write_bytes(head + moov(offset) + mdat)
    return path


def uniform_grey_jpeg(side: int) -> bytes:
    """A baseline JPEG, one grey component of ``side x side`` (a multiple of 8), every pixel 128.

    Written without ever holding the picture: the headers come from a small image PIL encodes with the
    standard tables, the scan is the same 6 bits (DC difference 0, end of block) for every block.
    """
    if side % 8:
        raise ValueError("side must be a multiple of 8")
    small = io.BytesIO()
    Image.new("L", (8, 8), 128).save(small, format="JPEG", quality=75, optimize=False)
    data = small.getvalue()
    start_of_scan = data.index(b"\xff\xda")
    scan_header_end = start_of_scan + 2 + struct.unpack(">H", data[start_of_scan + 2 : start_of_scan + 4])[0]
    headers = bytearray(data[:scan_header_end])
    frame_header = headers.index(b"\xff\xc0")
    headers[frame_header + 5 : frame_header + 9] = struct.pack(">HH", side, side)
    blocks = (side // 8) ** 2
    pattern = bytes.fromhex("28a28a")  # 001010 four times: 4 blocks per 3 bytes
    scan = pattern * (blocks // 4)
    rest = blocks % 4
    if rest:
        bits = "001010" * rest
        bits += "1" * (-len(bits) % 8)  # pad with ones, as JPEG does
        scan += int(bits, 2).to_bytes(len(bits) // 8, "big")
    return bytes(headers) + scan + b"\xff\xd9"


def size_switch_mjpeg_mkv(path: Path, side: int = 16_000, small_frames: int = 4, large_frames: int = 4) -> Path:
    """64x64 MJPEG frames (what the header announces), then ``large_frames`` grey ``side x side`` JPEGs."""
    large = uniform_grey_jpeg(side)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuvj420p"
        stream.codec_context.time_base = Fraction(1, 10)
        index = 0
        for index in range(small_frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 90, np.uint8), format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, 10)
            container.mux(stream.encode(frame.reformat(format="yuvj420p")))
        container.mux(stream.encode(None))
        for offset in range(large_frames):
            packet = av.Packet(large)
            packet.stream = stream
            packet.pts = packet.dts = small_frames + offset
            packet.time_base = Fraction(1, 10)
            packet.is_keyframe = True
            container.mux(packet)
    return path


def delimiter_packets_mkv(path: Path, packets: int = 300_000, step_ms: int = 1, live: bool = True) -> Path:
    """One 64x64 H.264 frame, then ``packets`` access-unit delimiter packets ``step_ms`` apart. ``live``:
    the header carries no duration (as a recording cut off while being written)."""
    frames = _h264_frames(1)
    with av.open(str(path), "w", format="matroska", options={"live": "1"} if live else {}) as container:
        stream = container.add_stream("h264", rate=1000)
        stream.width = stream.height = 64
        stream.time_base = Fraction(1, 1000)
        first = av.Packet(frames)
        first.stream = stream
        first.pts = first.dts = 0
        first.time_base = Fraction(1, 1000)
        first.is_keyframe = True
        container.mux(first)
        for index in range(1, packets + 1):
            packet = av.Packet(ACCESS_UNIT_DELIMITER)
            packet.stream = stream
            packet.pts = packet.dts = index * step_ms
            packet.time_base = Fraction(1, 1000)
            container.mux(packet)
    return path
