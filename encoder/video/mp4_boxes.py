"""Sample counts an ISO BMFF file (mp4, mov, m4v, 3gp) declares, read from its boxes before FFmpeg opens it.

FFmpeg's mov demuxer builds one index entry (about 24 bytes) for every sample a track's ``stsz``
(or ``stz2``) box and every fragment's ``trun`` box declares, while it opens the file. A 1 KB file can
declare 80 million one-byte samples without a size table, and opening it then costs gigabytes.
:func:`declared_sample_problem` walks the box tree (headers only, a bounded number of boxes) and says
what is impossible about the declared counts before anything is indexed:

- more samples than a clip can have: over ``max_samples`` in all tracks and fragments together;
- a constant sample size whose samples cannot fit in the file (``count * size`` > the file's size), or a
  size table that holds fewer entries than it declares;
- a video track with more samples than its duration allows at :data:`MAX_FRAME_RATE` frames per second.

Files that do not start with an ISO BMFF box are not this module's business (``None``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

__all__ = ["MAX_BOXES", "MAX_FRAME_RATE", "MAX_SAMPLES", "declared_sample_problem"]

MAX_SAMPLES = 1 << 22
"""Most samples (all tracks and fragments) an indexed file may declare: about 4.2 million, 46 hours at 25 fps."""
MAX_FRAME_RATE = 1000
"""Most video samples per second of a track's declared duration."""
MAX_BOXES = 200_000
"""Most boxes walked; a file holding more is refused (a real file holds a few per fragment)."""

_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx", b"moof"}
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"moof", b"traf", b"edts", b"mvex"}


class _Track:
    def __init__(self) -> None:
        self.video = False
        self.timescale = 0
        self.duration = 0
        self.samples = 0


def declared_sample_problem(path: str | os.PathLike, max_samples: int = MAX_SAMPLES) -> str | None:
    """What is impossible about the sample counts ``path`` declares, in words; None when nothing is (or
    the file is no ISO BMFF file, or is too short to tell). Reads box headers only."""
    path = Path(path)
    file_size = path.stat().st_size
    with path.open("rb") as file:
        first = file.read(8)
        if len(first) < 8 or first[4:8] not in _TOP_LEVEL:
            return None
        file.seek(0)
        walker = _Walker(file, file_size)
        try:
            problem = walker.walk(0, file_size, depth=0)
        except _TooMany:
            return f"it holds more than {MAX_BOXES} boxes"
    if problem:
        return problem
    total = sum(track.samples for track in walker.tracks) + walker.fragment_samples
    if total > max_samples:
        return f"it declares {total} samples, more than the {max_samples} a clip may have"
    for track in walker.tracks:
        if track.video and track.timescale > 0:
            seconds = track.duration / track.timescale
            if track.samples > seconds * MAX_FRAME_RATE + MAX_FRAME_RATE:
                return (
                    f"a video track declares {track.samples} frames in {seconds:.3g} s "
                    f"(over {MAX_FRAME_RATE} frames per second)"
                )
    return None


class _TooMany(Exception):
    pass


class _Walker:
    def __init__(self, file, file_size: int):
        self.file, self.file_size = file, file_size
        self.tracks: list[_Track] = []
        self.fragment_samples = 0
        self.boxes = 0

    def walk(self, begin: int, end: int, depth: int) -> str | None:
        position = begin
        while position + 8 <= end:
            self.boxes += 1
            if self.boxes > MAX_BOXES:
                raise _TooMany
            self.file.seek(position)
            header = self.file.read(16)
            if len(header) < 8:
                return None
            size, kind = struct.unpack(">I4s", header[:8])
            header_size = 8
            if size == 1:
                if len(header) < 16:
                    return None
                size = struct.unpack(">Q", header[8:16])[0]
                header_size = 16
            elif size == 0:
                size = end - position
            if size < header_size:
                return None  # malformed: FFmpeg decides what to make of the rest
            box_end = min(position + size, end)
            problem = self._visit(kind, position + header_size, box_end, depth)
            if problem:
                return problem
            position += size
        return None

    def _read(self, offset: int, count: int) -> bytes:
        self.file.seek(offset)
        return self.file.read(count)

    def _visit(self, kind: bytes, begin: int, end: int, depth: int) -> str | None:
        if depth > 16:
            return None
        if kind == b"trak":
            self.tracks.append(_Track())
        if kind in _CONTAINERS:
            return self.walk(begin, end, depth + 1)
        track = self.tracks[-1] if self.tracks else None
        if kind == b"hdlr" and track is not None:
            payload = self._read(begin, 12)
            track.video = len(payload) == 12 and payload[8:12] == b"vide"
        elif kind == b"mdhd" and track is not None:
            payload = self._read(begin, 32)
            if payload[:1] == b"\x01" and len(payload) >= 32:  # version 1: 64-bit times
                track.timescale, track.duration = struct.unpack(">IQ", payload[20:32])
            elif payload[:1] == b"\x00" and len(payload) >= 20:
                track.timescale, track.duration = struct.unpack(">II", payload[12:20])
        elif kind in (b"stsz", b"stz2") and track is not None:
            payload = self._read(begin, 12)
            if len(payload) < 12:
                return None
            if kind == b"stsz":
                sample_size, count = struct.unpack(">II", payload[4:12])
                table_bytes = 0 if sample_size else 4 * count
            else:
                field_bits, count = payload[7], struct.unpack(">I", payload[8:12])[0]
                sample_size, table_bytes = 0, (count * field_bits + 7) // 8
            track.samples += count
            if sample_size and count * sample_size > self.file_size:
                return f"a track declares {count} samples of {sample_size} bytes, more than the file holds"
            if table_bytes > end - begin - 12:
                return f"a track declares {count} samples but its size table holds fewer"
        elif kind == b"trun":
            payload = self._read(begin, 8)
            if len(payload) == 8:
                self.fragment_samples += struct.unpack(">I", payload[4:8])[0]
        return None
