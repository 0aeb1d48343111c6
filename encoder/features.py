"""Frozen, batched feature extraction and the on-disk feature cache.

``encode_clips`` turns pixels into encoder tokens. ``extract_features`` runs it over a folder or
manifest of videos and writes a cache directory:

    CACHE_DIR/
      meta.json                 encoder identity, frames, size, storage dtype
      shard-00000.safetensors   tensor "tokens" [rows, T*N, D]
      index.jsonl               one line per cached clip: video, shard, row, frames, encoder
      errors.jsonl              one line per unreadable clip: video, error

A shard is written to a temporary file and renamed into place before its index lines are
appended (and flushed to disk), so a run killed at any point loses nothing already indexed, and a
re-run skips every clip that is indexed or listed as an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import VideoPrismVisionModel

from encoder.factorized import encode_tokens
from encoder.video import VideoDecodeError, load_clip

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v", ".mpg", ".mpeg")
INDEX_FILE = "index.jsonl"
ERRORS_FILE = "errors.jsonl"
META_FILE = "meta.json"
PRECISIONS = ("fp32", "bf16")


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def clips_to_model_input(clips: torch.Tensor | np.ndarray) -> torch.Tensor:
    """[B, T, H, W, 3] RGB in [0, 1] (our layout) -> [B, T, 3, H, W] (transformers' layout).

    This is the one place where the channel axis moves.
    """
    clips = torch.as_tensor(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips must have shape [B, T, H, W, 3], got {tuple(clips.shape)}")
    return clips.permute(0, 1, 4, 2, 3)


@torch.inference_mode()
def encode_clips(
    model: VideoPrismVisionModel,
    clips: torch.Tensor | np.ndarray,
    precision: str = "fp32",
    frame_paddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frozen encoder tokens of a batch of clips.

    clips: [B, T, H, W, 3] float RGB in [0, 1] (H, W multiples of the patch size).
    precision: 'fp32', or 'bf16' (autocast on CUDA and on CPUs with native bf16; elsewhere a
        warning and autocast anyway, which is slower than fp32).
    Returns float32 tokens [B, T*N, D] on the model's device.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = next(model.parameters()).device
    weight_dtype = next(model.parameters()).dtype
    pixels = clips_to_model_input(clips).to(device=device, dtype=weight_dtype, non_blocking=True)
    if precision == "bf16" and weight_dtype == torch.float32:
        if device.type == "cpu" and not cpu_supports_bf16():
            warnings.warn("this CPU has no native bf16; bf16 encoding will be slower than fp32", stacklevel=2)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            tokens = encode_tokens(model, pixels, frame_paddings)
    else:
        tokens = encode_tokens(model, pixels, frame_paddings)
    return tokens.float()


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def list_videos(source: str | os.PathLike) -> list[str]:
    """Video paths from a directory (recursive, by extension), a JSONL manifest (key "video"; paths
    relative to the manifest's folder) or a text file with one path per line."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no such folder or manifest: {source}")
    if source.is_dir():
        return sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    videos = []
    with open(source, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            if source.suffix == ".jsonl" or line.startswith("{"):
                try:
                    path = json.loads(line)["video"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{source}:{line_number}: expected a JSON object with a 'video' key") from None
            else:
                path = line
            path = Path(path)
            videos.append(str(path if path.is_absolute() else source.parent / path))
    return list(dict.fromkeys(videos))


class _ClipDataset(torch.utils.data.Dataset):
    """Decodes one clip per item: (path, [T, H, W, 3] float32 array or None, error message or None)."""

    def __init__(self, videos: Sequence[str], num_frames: int, size: int):
        self.videos, self.num_frames, self.size = list(videos), num_frames, size

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int):
        path = self.videos[index]
        try:
            return path, load_clip(path, num_frames=self.num_frames, size=self.size), None
        except (FileNotFoundError, VideoDecodeError, ValueError, OSError) as error:
            return path, None, f"{type(error).__name__}: {error}"


def _collate(items):
    return items


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


@dataclass
class CacheMeta:
    """What a cache's tokens depend on; a resumed run must match it."""

    encoder: str
    encoder_config_sha1: str
    num_frames: int
    size: int
    precision: str
    storage_dtype: str


def encoder_identity(model: VideoPrismVisionModel) -> tuple[str, str]:
    """(source, sha1 of the config JSON) of a loaded encoder."""
    source = getattr(model, "prism_source", None) or model.config.name_or_path or "unknown"
    config_json = json.dumps(model.config.to_diff_dict(), sort_keys=True, default=str)
    return str(source), hashlib.sha1(config_json.encode()).hexdigest()


def _read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file; a torn last line (from a killed writer) is ignored."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class FeatureCache:
    """Read access to a cache directory written by ``extract_features``."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        if not (self.cache_dir / META_FILE).is_file():
            raise FileNotFoundError(f"{self.cache_dir} is not a feature cache (no {META_FILE})")
        self.meta = CacheMeta(**json.loads((self.cache_dir / META_FILE).read_text()))
        self.entries = {row["video"]: row for row in _read_jsonl(self.cache_dir / INDEX_FILE)}
        self.errors = {row["video"]: row["error"] for row in _read_jsonl(self.cache_dir / ERRORS_FILE)}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, video: str) -> bool:
        return video in self.entries

    @property
    def videos(self) -> list[str]:
        return list(self.entries)

    def get(self, video: str) -> torch.Tensor:
        """Tokens of one clip: [T*N, D] in the storage dtype."""
        if video not in self.entries:
            raise KeyError(f"{video} is not in the feature cache {self.cache_dir}")
        entry = self.entries[video]
        with safe_open(self.cache_dir / entry["shard"], framework="pt") as shard:
            return shard.get_slice("tokens")[entry["row"]]


def extract_features(
    model: VideoPrismVisionModel,
    videos: Sequence[str],
    cache_dir: str | os.PathLike,
    num_frames: int = 16,
    size: int = 288,
    batch_size: int = 8,
    precision: str = "fp32",
    storage_dtype: str = "fp32",
    shard_size: int = 256,
    num_workers: int = 2,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Encode every video not already cached and append it to ``cache_dir``.

    Returns counts: {"encoded", "skipped" (already cached or listed as errors), "errors"}.
    ``on_batch`` is called with the number of clips finished after each batch (for tests and UIs).
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be positive")
    storage = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if storage_dtype not in storage:
        raise ValueError(f"storage_dtype must be one of {sorted(storage)}, got {storage_dtype!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    source, config_sha1 = encoder_identity(model)
    meta = CacheMeta(source, config_sha1, num_frames, size, precision, storage_dtype)
    meta_path = cache_dir / META_FILE
    if meta_path.is_file():
        existing = CacheMeta(**json.loads(meta_path.read_text()))
        if (existing.encoder_config_sha1, existing.num_frames, existing.size, existing.storage_dtype) != (
            meta.encoder_config_sha1,
            meta.num_frames,
            meta.size,
            meta.storage_dtype,
        ):
            raise ValueError(
                f"{cache_dir} was written with different settings ({asdict(existing)}); "
                f"use another cache directory for {asdict(meta)}"
            )
    else:
        meta_path.write_text(json.dumps(asdict(meta), indent=2))

    index_path, errors_path = cache_dir / INDEX_FILE, cache_dir / ERRORS_FILE
    done = {row["video"] for row in _read_jsonl(index_path)} | {row["video"] for row in _read_jsonl(errors_path)}
    todo = [v for v in dict.fromkeys(videos) if v not in done]
    shard_numbers = [int(p.stem.split("-")[1]) for p in cache_dir.glob("shard-*.safetensors")]
    next_shard = max(shard_numbers, default=-1) + 1
    counts = {"encoded": 0, "skipped": len(videos) - len(todo), "errors": 0}
    if not todo:
        return counts

    pending_paths: list[str] = []
    pending_tokens: list[torch.Tensor] = []

    def flush_shard() -> None:
        nonlocal next_shard
        if not pending_paths:
            return
        name = f"shard-{next_shard:05d}.safetensors"
        temporary = cache_dir / (name + ".tmp")
        save_file({"tokens": torch.cat(pending_tokens).contiguous()}, str(temporary))
        os.replace(temporary, cache_dir / name)
        _append_jsonl(
            index_path,
            (
                {"video": path, "shard": name, "row": row, "frames": num_frames, "encoder": source}
                for row, path in enumerate(pending_paths)
            ),
        )
        next_shard += 1
        pending_paths.clear()
        pending_tokens.clear()

    loader = torch.utils.data.DataLoader(
        _ClipDataset(todo, num_frames, size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    bar = tqdm(total=len(todo), unit="clip", desc="features", disable=not progress)
    for items in loader:
        good = [(path, clip) for path, clip, error in items if error is None]
        bad = [{"video": path, "error": error} for path, _, error in items if error is not None]
        if bad:
            _append_jsonl(errors_path, bad)
            counts["errors"] += len(bad)
        if good:
            clips = np.stack([clip for _, clip in good])
            tokens = encode_clips(model, clips, precision=precision).to("cpu", storage[storage_dtype])
            for (path, _), row_tokens in zip(good, tokens):
                pending_paths.append(path)
                pending_tokens.append(row_tokens[None])
                if len(pending_paths) >= shard_size:
                    flush_shard()
            counts["encoded"] += len(good)
        bar.update(len(items))
        bar.set_postfix(errors=counts["errors"])
        if on_batch is not None:
            on_batch(counts["encoded"] + counts["errors"])
    flush_shard()
    bar.close()
    return counts
