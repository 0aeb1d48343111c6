"""Files and folders written atomically: after a kill or a power loss a path holds its old content
or all of the new one, never part of it (checkpoints, configs, feature caches, indexes, reports)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON (UTF-8), atomically (:func:`write_file_atomically`), making
    the parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def write_file_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` beside ``path``, sync it, rename it into place and sync the folder: after a
    kill or a power loss ``path`` holds either its old content or all of ``data``."""
    with atomic_output_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)


def write_text_atomically(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (:func:`write_file_atomically`), making the parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, text.encode(encoding))


@contextmanager
def atomic_output_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` (``.NAME.tmp-PID``) for a writer that wants a file name
    (safetensors, PyAV, FAISS, ...). When the block ends, the file written there is synced, renamed
    to ``path`` and the folder synced: after a kill or a power loss ``path`` holds its old content or
    all of the new one. When the block raises, the temporary file is removed and ``path`` left alone."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):  # the writer's error is the one to report
            temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def save_directory_atomically(directory: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Have ``write(folder)`` fill a new folder beside ``directory``, sync every file, then put it in
    place of ``directory`` by renames: a kill at any moment leaves the previous ``directory`` (or,
    between the two renames, its copy ``.NAME.old-PID`` beside it) or the complete new one, never a
    half-written one."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if temporary.exists():
        shutil.rmtree(temporary)
    write(temporary)
    for file in temporary.rglob("*"):
        if file.is_file():
            fsync_file(file)
    fsync_dir(temporary)
    swap_in_folder(temporary, final, final.with_name(f".{final.name}.old-{os.getpid()}"))
    fsync_dir(final.parent)
    return final


def swap_in_folder(temporary: Path, final: Path, stale: Path) -> None:
    """Put the finished folder ``temporary`` in place of ``final`` by renames: an existing ``final``
    is moved to ``stale`` first and removed last, so a kill leaves one complete copy."""
    if not final.exists():
        os.replace(temporary, final)
        return
    if stale.exists():
        shutil.rmtree(stale)
    os.replace(final, stale)
    os.replace(temporary, final)
    shutil.rmtree(stale)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to disk (where the
    platform allows it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories cannot be opened on some platforms
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
