"""The window cache: per window of a long video, what a model computed from it, kept on disk so that the
second question about the same video encodes nothing.

An entry is keyed by the file's content (sha256 of its bytes) and the settings that shaped the tensors
(window length, frames, frame size, and the fingerprint of the model's weights), so a changed file, other
settings or another model never read a stale entry. Entries live under the user cache
(``$PRISM_VLM_CACHE``, else ``$XDG_CACHE_HOME/prism-vlm/windows``, else ``~/.cache/prism-vlm/windows``);
deleting the folder is always safe.

Layout of one entry (a folder named by the key)::

    meta.json                  the settings, the video's duration, the windows' spans, chunks written
    chunk-00000.safetensors    "values" [n, ...] of windows 0..n-1 (float16), written atomically
    chunk-00001.safetensors    the next windows ...

Chunks are written as windows are computed, so an interrupted run keeps what it finished and the next
one resumes after it. The cache is bounded in bytes (:attr:`WindowCache.max_bytes`): after a write, the
least recently used entries are removed until it fits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from encoder.common.atomic_files import atomic_output_path, write_json
from encoder.common.errors import PrismVlmError

CACHE_ENV = "PRISM_VLM_CACHE"
DEFAULT_MAX_BYTES = 2 * 1024**3
CHUNK_WINDOWS = 32  # windows per chunk file
META_FILE = "meta.json"
_HASH_BLOCK = 1 << 20


class WindowCacheError(PrismVlmError, ValueError):
    """A cache setting that cannot work (a size limit below zero, a cache path that is a file)."""


def default_cache_dir() -> Path:
    """``$PRISM_VLM_CACHE``, else ``$XDG_CACHE_HOME/prism-vlm/windows``, else ``~/.cache/prism-vlm/windows``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prism-vlm" / "windows"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks (memory does not grow with the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def module_fingerprint(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and bytes), remembered on the
    module: two models give the same fingerprint only if their weights are equal."""
    cached = getattr(module, "_prism_vlm_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    module._prism_vlm_fingerprint = value  # weights of a frozen model do not change while it is loaded
    return value


@dataclass(frozen=True)
class WindowSettings:
    """What one kind of per-window tensor depends on besides the file: its ``kind`` (e.g. "glue" or
    "video_text"), the model's fingerprint, the window length and the frames read per window."""

    kind: str
    model: str
    window_s: float
    num_frames: int
    frame_size: int

    def key(self, file_sha256: str) -> str:
        text = json.dumps({"file": file_sha256, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class WindowEntry:
    """The cached windows of one (file, settings): read what is there, append chunks, mark complete."""

    def __init__(self, directory: Path, meta: dict):
        self.directory, self.meta = directory, meta

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def num_windows(self) -> int:
        """Windows stored so far (a prefix of the video's windows)."""
        return sum(chunk["windows"] for chunk in self.meta["chunks"])

    def load(self) -> torch.Tensor | None:
        """Every stored window's values [N, ...] (float16), or None when nothing is stored."""
        from safetensors.torch import load_file

        parts = [load_file(str(self.directory / chunk["file"]))["values"] for chunk in self.meta["chunks"]]
        self._touch()
        return torch.cat(parts) if parts else None

    def load_range(self, start: int, stop: int) -> torch.Tensor:
        """Windows ``start`` to ``stop - 1`` [stop - start, ...] (float16), reading only the chunks that hold them."""
        from safetensors import safe_open

        parts, first = [], 0
        for chunk in self.meta["chunks"]:
            last = first + chunk["windows"]
            if first < stop and start < last:
                with safe_open(str(self.directory / chunk["file"]), framework="pt") as handle:
                    parts.append(handle.get_slice("values")[max(start - first, 0) : min(stop, last) - first])
            first = last
        self._touch()
        return torch.cat(parts)

    def append(self, values: torch.Tensor) -> None:
        """Store the next windows' values [n, ...] (kept as float16) after the ones already stored."""
        from safetensors.torch import save_file

        name = f"chunk-{len(self.meta['chunks']):05d}.safetensors"
        with atomic_output_path(self.directory / name) as temporary:
            save_file({"values": values.detach().to("cpu", torch.float16).contiguous()}, str(temporary))
        self.meta["chunks"].append({"file": name, "windows": int(values.shape[0])})
        write_json(self.directory / META_FILE, self.meta)

    def finish(self) -> None:
        self.meta["complete"] = True
        write_json(self.directory / META_FILE, self.meta)

    def _touch(self) -> None:
        os.utime(self.directory / META_FILE)  # least-recently-used order for eviction


class WindowCache:
    """Per-window tensors of long videos on disk, keyed by file content and settings, bounded in bytes.

    directory: where entries live (:func:`default_cache_dir` when None); max_bytes: the bound (0: the cache
    stores nothing and every video is encoded again)."""

    def __init__(self, directory: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 0:
            raise WindowCacheError(f"the window cache's size limit must be >= 0 bytes, got {max_bytes}")
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        if self.directory.exists() and not self.directory.is_dir():
            raise WindowCacheError(f"the window cache {self.directory} is a file, not a folder")
        self.max_bytes = int(max_bytes)
        self._digests: dict[tuple[str, int, int], str] = {}

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def digest(self, path: str | os.PathLike) -> str:
        """The file's sha256, remembered for this process while its size and mtime stay the same."""
        stat = os.stat(path)
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def entry(
        self, path: str | os.PathLike, settings: WindowSettings, spans: Iterable[tuple[float, float]]
    ) -> WindowEntry:
        """The entry of ``path`` under ``settings`` (created empty when missing). ``spans``: the windows'
        (start, end) in seconds; an entry whose spans differ (another decoder's duration) starts over."""
        spans = [[round(float(start), 6), round(float(end), 6)] for start, end in spans]
        directory = self.directory / settings.key(self.digest(path))
        meta_path = directory / META_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                if meta.get("spans") == spans and all((directory / c["file"]).is_file() for c in meta["chunks"]):
                    return WindowEntry(directory, meta)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged entry is rebuilt
            shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"settings": asdict(settings), "spans": spans, "chunks": [], "complete": False, "created": time.time()}
        write_json(meta_path, meta)
        return WindowEntry(directory, meta)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file()) if self.directory.is_dir() else 0

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries (never ``keep``) until the cache fits :attr:`max_bytes`."""
        if not self.directory.is_dir():
            return []
        entries = []
        for directory in self.directory.iterdir():
            meta = directory / META_FILE
            if directory.is_dir():
                size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
                used = meta.stat().st_mtime if meta.is_file() else 0.0
                entries.append((used, size, directory))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, directory in sorted(entries):
            if total <= self.max_bytes:
                break
            if keep is not None and directory == keep:
                continue
            shutil.rmtree(directory, ignore_errors=True)
            total -= size
            removed.append(directory)
        return removed
