"""Files and folders written atomically: after a kill or a power loss a path holds its old content
or all of the new one, never part of it (checkpoints, configs, feature caches, indexes, reports)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
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
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
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
