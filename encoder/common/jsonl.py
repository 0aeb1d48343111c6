"""JSON-lines files: the strict reader of hand-written manifests (:func:`iter_jsonl_strict`); for
files written a batch at a time by jobs that may be killed, the one tolerant reader, the one
appender (:class:`JsonlAppender`, :func:`append_jsonl`), and the repair of a torn last line; and the
writer of a whole file at once, atomically (:func:`write_jsonl_atomically`).

A writer killed mid-line leaves a last line without its newline, possibly cut inside a multi-byte
UTF-8 character. Readers skip such a line (and any line that is not valid UTF-8 JSON holding an
object); before appending, the torn bytes are moved to a sidecar file ``NAME.torn`` (nothing is
deleted) so that new lines start on a line of their own.

Strings holding lone surrogates (a file name that is not UTF-8, as ``os.fsdecode`` gives it:
``b"clip_\\xff.mp4"`` -> ``"clip_\\udcff.mp4"``) cannot be encoded as UTF-8; a row holding one is
written with ``\\udcXX`` escapes instead, which :func:`json.loads` reads back as the same string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from encoder.common.atomic_files import write_text_atomically

TORN_SUFFIX = ".torn"


def json_line(row: dict, ensure_ascii: bool = False) -> str:
    """``row`` as one JSON line (ending in a newline) that can be written as UTF-8: a row holding a
    lone surrogate (a non-UTF-8 file name decoded by ``os.fsdecode``) is written ASCII-only, with
    ``\\udcXX`` escapes that read back as the same string."""
    text = json.dumps(row, ensure_ascii=ensure_ascii)
    if not ensure_ascii and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(row, ensure_ascii=True)
    return text + "\n"


def jsonl_text(rows: Iterable[dict], ensure_ascii: bool = False) -> str:
    """``rows`` as JSON lines (one :func:`json_line` per row)."""
    return "".join(json_line(row, ensure_ascii) for row in rows)


def write_jsonl_atomically(path: str | os.PathLike, rows: Iterable[dict], ensure_ascii: bool = False) -> int:
    """Write ``rows`` as the whole of ``path`` (JSON lines, UTF-8), atomically: after a kill ``path``
    holds its old content or all of the new one (:func:`~encoder.common.atomic_files.write_file_atomically`).
    Makes the parent folders. Returns the number of rows."""
    rows = list(rows)
    write_text_atomically(path, jsonl_text(rows, ensure_ascii))
    return len(rows)


def iter_jsonl_tolerant(path: str | os.PathLike) -> Iterator[dict]:
    """The complete JSON-object lines of ``path`` (none if it does not exist); a last line without
    its newline, undecodable bytes and lines that are not JSON objects are skipped."""
    for _, row in iter_jsonl_numbered(path):
        yield row


def iter_jsonl_numbered(
    path: str | os.PathLike, on_skipped: Callable[[int, str, bytes], None] | None = None
) -> Iterator[tuple[int, dict]]:
    """(line number, object) for the complete JSON-object lines of ``path`` (none if it does not
    exist), as :func:`iter_jsonl_tolerant`. ``on_skipped(number, reason, raw line)`` is called for
    each non-blank line skipped because it is not UTF-8, not JSON or not a JSON object; a last line
    without its newline (a writer killed mid-line, or one still writing) is skipped silently."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n"):
                return  # torn by a killed writer
            reason = None
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                reason = "not UTF-8 text"
            except json.JSONDecodeError as error:
                reason = f"not valid JSON ({error.msg})"
            else:
                if not isinstance(row, dict):
                    reason = "not a JSON object"
            if reason is None:
                yield number, row
            elif on_skipped is not None and raw.strip():
                on_skipped(number, reason, raw)


def iter_jsonl_strict(
    path: str | os.PathLike, error: type[Exception] = ValueError, plain_lines_as: str | None = None
) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a manifest someone wrote by hand; a line that
    is not UTF-8, not valid JSON or not a JSON object raises ``error`` naming ``PATH:LINE``.

    plain_lines_as: in a file not named ``.jsonl``, a line not starting with ``{`` is read as
    ``{plain_lines_as: line}`` (a list of video paths, one per line); None: every line is JSON."""
    path = Path(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise error(f"{path}:{number}: not UTF-8 text") from None
            if not line:
                continue
            if plain_lines_as is not None and path.suffix != ".jsonl" and not line.startswith("{"):
                yield number, {plain_lines_as: line}
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as decode_error:
                raise error(f"{path}:{number}: not valid JSON ({decode_error.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{number}: expected a JSON object")
            yield number, row


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """:func:`iter_jsonl_tolerant` as a list."""
    return list(iter_jsonl_tolerant(path))


def cut_torn_tail(path: str | os.PathLike) -> int:
    """Move a last line without its newline (left by a writer killed mid-line) from ``path`` to
    ``path`` + ``.torn`` (appended there, so nothing is lost). Returns the number of bytes moved."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = 0
        position = size
        while position > 0:  # scan back to the last newline
            step = min(65536, position)
            handle.seek(position - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = position - step + newline + 1
                break
            position -= step
        handle.seek(keep)
        torn = handle.read()
        with open(path.with_name(path.name + TORN_SUFFIX), "ab") as sidecar:
            sidecar.write(torn + b"\n")
            sidecar.flush()
            os.fsync(sidecar.fileno())
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return len(torn)


class JsonlAppender:
    """Appends JSON lines to a file (its torn tail moved aside first), flushed and synced to disk
    after every :meth:`write`, so a killed job loses at most the write in flight.

    sync=False: flushed to the operating system after every write but not synced to disk (a killed
    process loses nothing written; a power loss may lose the last writes), for frequent small writes
    such as per-step metrics."""

    def __init__(self, path: str | os.PathLike, ensure_ascii: bool = False, sync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(self.path)
        self._ensure_ascii = ensure_ascii
        self._sync = sync
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        self._handle.write(jsonl_text(rows, self._ensure_ascii))
        self._handle.flush()
        if self._sync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict], ensure_ascii: bool = False, sync: bool = True) -> None:
    """Append ``rows`` to ``path`` as JSON lines, once (a :class:`JsonlAppender` opened for one
    write: the torn tail moved aside first, the lines flushed and, unless ``sync=False``, synced to
    disk). Makes the parent folders; nothing is written (the file is not created) when ``rows`` is
    empty."""
    rows = list(rows)
    if not rows:
        return
    with JsonlAppender(path, ensure_ascii=ensure_ascii, sync=sync) as appender:
        appender.write(rows)
