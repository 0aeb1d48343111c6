"""Frozen, batched feature extraction and the on-disk feature cache.

``encode_clips`` turns pixels into encoder tokens. ``extract_features`` runs it over a list of
videos (``encoder.video.clips.list_videos`` of a folder or manifest), decoded by
``encoder.video.clips.iter_decoded_batches``, and writes a cache directory:

    CACHE_DIR/
      meta.json                 encoder identity, frames, size, storage dtype
      shard-00000.safetensors   tensor "tokens" [rows, T*N, D]
      index.jsonl               one line per cached clip: video, shard, row, frames, encoder
      errors.jsonl              one line per unreadable clip: video, error

A shard is written to a temporary file and renamed into place before its index lines are
appended (and flushed to disk), so a run killed at any point loses nothing already indexed, and a
re-run skips every clip that is indexed or listed as an error.

Index and error lines are checked when read (:func:`read_index`, :func:`read_errors`): a line that is
not a JSON object, lacks a key, has a "row" that is not a non-negative integer, or a "shard" that is
not named as the writer names shards (``shard-NNNNN.safetensors``, directly inside the cache
directory) is logged as a warning naming ``FILE:LINE`` and ignored. A resumed run moves such lines
to ``index.jsonl.malformed`` (``errors.jsonl.malformed``) and encodes their clips again.

Training crops (``crops=K``, for training the glue from the cache with the paper's random-crop
augmentation): every clip is stored K + 1 times -- crop 0 is the plain centre crop (the evaluation
view, identical to a cache without crops) and crops 1..K are random ``size`` crops of the clip's
centre crop at ``encoder.video.crops.crop_source_size(size)`` (346 for 288), seeded by
(crop_seed, video, k). Index lines then carry a "crop" key; a clip's rows never straddle a shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import VideoPrismVisionModel

from encoder.common.atomic_files import atomic_output_path, write_file_atomically
from encoder.common.errors import PrismVlmError, UsageError
from encoder.common.jsonl import append_jsonl, cut_torn_tail, iter_jsonl_numbered, json_line, write_jsonl_atomically
from encoder.video.clips import Clip, iter_decoded_batches
from encoder.videoprism.factorized import encode_tokens

INDEX_FILE = "index.jsonl"
ERRORS_FILE = "errors.jsonl"
META_FILE = "meta.json"
LOCK_FILE = ".lock"
PRECISIONS = ("fp32", "bf16")
MALFORMED_SUFFIX = ".malformed"
SHARD_NAME = re.compile(r"shard-(\d{5,})\.safetensors")  # what shard_name() writes

logger = logging.getLogger(__name__)


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
    crops: int = 0
    crop_seed: int = 0
    kind: str = "tokens"  # "tokens" (encoder tokens [T*N, D] per clip) or another per-clip vector, e.g. embeddings


class CacheBusyError(PrismVlmError, ValueError):
    """Another process holds the cache directory's lock (it is writing there)."""


def encoder_identity(model: VideoPrismVisionModel) -> tuple[str, str]:
    """(source, sha1 of the config JSON) of a loaded encoder."""
    source = getattr(model, "prism_source", None) or model.config.name_or_path or "unknown"
    config_json = json.dumps(model.config.to_diff_dict(), sort_keys=True, default=str)
    return str(source), hashlib.sha1(config_json.encode()).hexdigest()


def shard_name(number: int) -> str:
    """The file name of shard ``number`` of a cache (``shard-00042.safetensors``)."""
    return f"shard-{number:05d}.safetensors"


def _shard_problem(cache_dir: Path, name: object) -> str | None:
    """Why ``name`` is not a shard of ``cache_dir`` (None when it is): it must be named as
    :func:`shard_name` names shards and resolve to a file directly inside ``cache_dir``, so an index
    line can never make a reader or a resume open, rename or read a file elsewhere."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        return f"'shard' must be a name like {shard_name(0)}, got {name!r}"
    if (cache_dir / name).resolve().parent != cache_dir.resolve():
        return f"the shard {name} resolves outside {cache_dir}"
    return None


def _is_count(value: object) -> bool:
    """A non-negative int (a JSON integer; not a bool, a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _video_problem(row: dict) -> str | None:
    """Why ``row["video"]`` is not a clip key (None when it is a non-empty string)."""
    video = row.get("video")
    return None if isinstance(video, str) and video else f"'video' must be a non-empty string, got {video!r}"


def _index_row_problem(row: dict, shard_problem: Callable[[object], str | None]) -> str | None:
    """Why an index line cannot be used (None when it can): "video" a non-empty string, "shard" a
    shard of the cache (``shard_problem``), "row" and "crop" (when present) non-negative integers."""
    if (problem := _video_problem(row)) is not None:
        return problem
    if (problem := shard_problem(row.get("shard"))) is not None:
        return problem
    for key in ("row", "crop"):
        if (key == "row" or key in row) and not _is_count(row.get(key)):
            return f"{key!r} must be a non-negative integer, got {row.get(key)!r}"
    return None


def _errors_row_problem(row: dict) -> str | None:
    """Why an errors line cannot be used (None when it can): "video" a non-empty string, "error" a string."""
    if (problem := _video_problem(row)) is not None:
        return problem
    return None if isinstance(row.get("error"), str) else f"'error' must be a string, got {row.get('error')!r}"


def _warn_malformed(path: Path, number: int, reason: str) -> None:
    """Log a malformed line of a cache file, naming ``PATH:LINE``."""
    logger.warning("%s:%d: %s; line ignored (its clip is encoded again on resume)", path, number, reason)


def _read_checked(path: Path, problem_of: Callable[[dict], str | None]) -> tuple[list[tuple[int, dict]], list[bytes]]:
    """((line number, row) of the usable lines, malformed lines as bytes) of a cache's JSONL file;
    every malformed line (not a JSON object, or one ``problem_of`` rejects) is logged as a warning
    naming ``PATH:LINE``."""
    rows: list[tuple[int, dict]] = []
    malformed: list[bytes] = []

    def skip(number: int, reason: str, raw: bytes) -> None:
        _warn_malformed(path, number, reason)
        malformed.append(raw)

    for number, row in iter_jsonl_numbered(path, on_skipped=skip):
        problem = problem_of(row)
        if problem is None:
            rows.append((number, row))
        else:
            skip(number, problem, json_line(row, ensure_ascii=True).encode())
    return rows, malformed


def read_index(cache_dir: str | os.PathLike) -> tuple[list[dict], list[bytes]]:
    """(usable lines, malformed lines) of ``cache_dir``'s index; see :func:`_index_row_problem` for
    what is checked. Malformed lines are logged as warnings naming the file and line."""
    rows, malformed = _read_index_numbered(Path(cache_dir))
    return [row for _, row in rows], malformed


def _read_index_numbered(cache_dir: Path) -> tuple[list[tuple[int, dict]], list[bytes]]:
    """:func:`read_index` with the line number of every usable line."""
    checked: dict[object, str | None] = {}  # one resolve() per distinct shard name

    def shard_problem(name: object) -> str | None:
        if not isinstance(name, str):
            return _shard_problem(cache_dir, name)
        if name not in checked:
            checked[name] = _shard_problem(cache_dir, name)
        return checked[name]

    return _read_checked(cache_dir / INDEX_FILE, lambda row: _index_row_problem(row, shard_problem))


def read_errors(cache_dir: str | os.PathLike) -> tuple[list[dict], list[bytes]]:
    """(usable lines, malformed lines) of ``cache_dir``'s errors file ("video" and "error" strings);
    malformed lines are logged as warnings naming the file and line."""
    rows, malformed = _read_checked(Path(cache_dir) / ERRORS_FILE, _errors_row_problem)
    return [row for _, row in rows], malformed


class FeatureCache:
    """Read access to a cache directory written by ``extract_features``. Index and error lines are
    checked as they are read (:func:`read_index`): malformed ones are logged and left out."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        if not (self.cache_dir / META_FILE).is_file():
            raise FileNotFoundError(f"{self.cache_dir} is not a feature cache (no {META_FILE})")
        self.meta = CacheMeta(**json.loads((self.cache_dir / META_FILE).read_text()))
        rows, _ = read_index(self.cache_dir)
        self.errors = {row["video"]: row["error"] for row in read_errors(self.cache_dir)[0]}
        if not self.meta.crops:
            self.entries = {row["video"]: row for row in rows}
            self.crop_entries = {video: {0: row} for video, row in self.entries.items()}
            return
        # crops: a clip is cached when all of its 1 + crops rows are indexed
        self.crop_entries: dict[str, dict[int, dict]] = {}
        for row in rows:
            self.crop_entries.setdefault(row["video"], {})[row.get("crop", 0)] = row
        complete = set(range(self.meta.crops + 1))
        self.crop_entries = {v: crops for v, crops in self.crop_entries.items() if set(crops) >= complete}
        self.entries = {video: crops[0] for video, crops in self.crop_entries.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, video: str) -> bool:
        return video in self.entries

    @property
    def videos(self) -> list[str]:
        return list(self.entries)

    @property
    def num_crops(self) -> int:
        """Random training crops stored per clip besides the centre crop (0: centre crop only)."""
        return self.meta.crops

    def get(self, video: str, crop: int = 0) -> torch.Tensor:
        """Tokens of one clip: [T*N, D] in the storage dtype. ``crop``: 0 = centre crop, 1..num_crops
        = the random training crops of a cache written with ``crops``."""
        if video not in self.entries:
            raise KeyError(f"{video} is not in the feature cache {self.cache_dir}")
        if not 0 <= crop <= self.meta.crops:
            raise KeyError(f"crop {crop} of {video}: the cache {self.cache_dir} holds crops 0..{self.meta.crops}")
        entry = self.crop_entries[video][crop]
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
    crops: int = 0,
    crop_seed: int = 0,
) -> dict[str, int]:
    """Encode every video not already cached and append it to ``cache_dir``.

    Returns counts: {"encoded", "skipped" (already cached or listed as errors), "errors"}.
    ``on_batch`` is called with the number of clips finished after each batch (for tests and UIs).
    ``crops`` > 0 also stores that many seeded random training crops per clip (see the module docstring).
    One process writes a cache at a time (a lock file; a second one gets CacheBusyError); on resume,
    malformed index lines and those pointing at a missing or damaged shard are dropped so their clips
    are encoded again.
    """

    from encoder.video.decode import check_num_frames, check_size

    num_frames, size = check_num_frames(num_frames), check_size(size)  # before any file is written
    if crops < 0:
        raise ValueError(f"crops must be >= 0, got {crops}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    source, config_sha1 = encoder_identity(model)
    meta = CacheMeta(source, config_sha1, num_frames, size, precision, storage_dtype, crops, crop_seed)
    return write_clip_vectors(
        lambda clips: encode_clips(model, clips, precision=precision),
        meta,
        videos,
        cache_dir,
        batch_size=batch_size,
        shard_size=shard_size,
        num_workers=num_workers,
        progress=progress,
        on_batch=on_batch,
        description="features",
    )


def write_clip_vectors(
    encode_batch: Callable[[np.ndarray], torch.Tensor],
    meta: CacheMeta,
    videos: Sequence[str],
    cache_dir: str | os.PathLike,
    batch_size: int = 8,
    shard_size: int = 256,
    num_workers: int = 2,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    description: str = "features",
) -> dict[str, int]:
    """The cache writer behind :func:`extract_features`, for any per-clip tensor.

    encode_batch: clips [B, T, S, S, 3] float RGB in [0, 1] -> [B, ...] (encoder tokens, video
        embeddings); stored in ``meta.storage_dtype``. ``meta`` says what the vectors depend on: a
        resumed run must match it. Decoding uses ``meta.num_frames`` x ``meta.size`` (and its crops).
    Resuming, shards, the single-writer lock and error rows as in the module docstring.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be positive")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    storage = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if meta.storage_dtype not in storage:
        raise ValueError(f"storage_dtype must be one of {sorted(storage)}, got {meta.storage_dtype!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CacheBusyError(
            f"{cache_dir} is being written by another process; wait for it to finish or use another cache directory"
        ) from None
    try:
        _drop_malformed_lines(cache_dir)
        _drop_unreadable_shards(cache_dir)
        return _extract_locked(
            encode_batch,
            meta,
            videos,
            cache_dir,
            batch_size,
            shard_size,
            num_workers,
            progress,
            on_batch,
            storage[meta.storage_dtype],
            description,
        )
    finally:
        lock.release()


def check_cache_meta(cache_dir: str | os.PathLike, meta: CacheMeta) -> bool:
    """Whether ``cache_dir`` already holds a cache; ValueError when it was written with other settings
    than ``meta`` (another encoder config, frames, size, storage dtype, crops or kind of vector)."""

    def settings(m: CacheMeta) -> tuple:
        return m.encoder_config_sha1, m.num_frames, m.size, m.storage_dtype, m.crops, m.crop_seed, m.kind

    meta_path = Path(cache_dir) / META_FILE
    if not meta_path.is_file():
        return False
    existing = CacheMeta(**json.loads(meta_path.read_text()))
    if settings(existing) != settings(meta):
        raise UsageError(
            f"{cache_dir} was written with different settings ({asdict(existing)}); "
            f"use another directory for {asdict(meta)}"
        )
    return True


def _drop_malformed_lines(cache_dir: Path) -> int:
    """Resume check: malformed lines of the index and of the errors file (:func:`read_index`,
    :func:`read_errors`) are moved to ``NAME.malformed`` (appended: nothing is deleted), so their
    clips are encoded again and the valid lines are kept. Returns the number of lines moved."""
    moved = 0
    for name, read in ((INDEX_FILE, read_index), (ERRORS_FILE, read_errors)):
        path = cache_dir / name
        cut_torn_tail(path)  # a torn last line goes to NAME.torn, as before any append
        rows, malformed = read(cache_dir)
        if not malformed:
            continue
        with open(path.with_name(name + MALFORMED_SUFFIX), "ab") as sidecar:
            sidecar.write(b"".join(malformed))
            sidecar.flush()
            os.fsync(sidecar.fileno())
        write_jsonl_atomically(path, rows, ensure_ascii=True)
        moved += len(malformed)
    return moved


def _drop_unreadable_shards(cache_dir: Path) -> list[str]:
    """Resume check: index lines whose shard is missing or unreadable (a power loss before the
    shard reached the disk) are removed from the index, so their clips are encoded again; a damaged
    shard is renamed ``NAME.corrupt``. A line pointing past the end of a readable shard is malformed:
    logged with its line number and removed alone. Runs after :func:`_drop_malformed_lines`, so
    every shard name here is one :func:`shard_name` could have written. Returns the shards dropped."""
    index_path = cache_dir / INDEX_FILE
    rows, _ = _read_index_numbered(cache_dir)
    if not rows:
        return []
    lengths = {name: _shard_length(cache_dir / name) for name in dict.fromkeys(row["shard"] for _, row in rows)}
    bad = [name for name, length in lengths.items() if length is None]
    kept = []
    for number, row in rows:
        length = lengths[row["shard"]]
        if length is not None and row["row"] >= length:
            _warn_malformed(index_path, number, f"row {row['row']} of {row['shard']}, which holds {length} rows")
        elif length is not None:
            kept.append(row)
    for name in bad:
        if (cache_dir / name).exists():
            os.replace(cache_dir / name, cache_dir / (name + ".corrupt"))
    if len(kept) < len(rows):
        write_jsonl_atomically(index_path, kept, ensure_ascii=True)
    return bad


def _shard_length(path: Path) -> int | None:
    """The number of rows of the shard at ``path``; None when it is missing or unreadable."""
    try:
        with safe_open(path, framework="pt") as shard:
            return shard.get_slice("tokens").get_shape()[0]
    except Exception:  # missing, empty, truncated header: safetensors raises several types
        return None


def _extract_locked(
    encode_batch,
    meta,
    videos,
    cache_dir,
    batch_size,
    shard_size,
    num_workers,
    progress,
    on_batch,
    storage_type,
    description,
) -> dict[str, int]:
    """The body of :func:`write_clip_vectors`, run while holding the cache's lock."""
    from tqdm.auto import tqdm

    source, num_frames, size, crops, crop_seed = meta.encoder, meta.num_frames, meta.size, meta.crops, meta.crop_seed
    meta_path = cache_dir / META_FILE
    if not check_cache_meta(cache_dir, meta):
        values = asdict(meta)
        if not crops:  # meta.json of a plain cache keeps its original keys
            del values["crops"], values["crop_seed"]
        if meta.kind == "tokens":
            del values["kind"]
        write_file_atomically(meta_path, json.dumps(values, indent=2).encode())

    index_path, errors_path = cache_dir / INDEX_FILE, cache_dir / ERRORS_FILE
    cache = FeatureCache(cache_dir)
    done = set(cache.entries) | set(cache.errors)
    todo = [v for v in dict.fromkeys(videos) if v not in done]
    shard_numbers = [int(match[1]) for p in cache_dir.iterdir() if (match := SHARD_NAME.fullmatch(p.name))]
    next_shard = max(shard_numbers, default=-1) + 1
    counts = {"encoded": 0, "skipped": len(videos) - len(todo), "errors": 0}
    if not todo:
        return counts

    pending_paths: list[str] = []
    pending_crops: list[int] = []
    pending_tokens: list[torch.Tensor] = []

    def flush_shard() -> None:
        nonlocal next_shard
        if not pending_paths:
            return
        name = shard_name(next_shard)
        # synced and renamed into place, folder synced: the shard is on disk before the index lines
        # that point at it
        with atomic_output_path(cache_dir / name) as temporary:
            save_file({"tokens": torch.cat(pending_tokens).contiguous()}, str(temporary))
        append_jsonl(
            index_path,
            (
                {"video": path, "shard": name, "row": row, "frames": num_frames, "encoder": source}
                | ({"crop": crop} if crops else {})
                for row, (path, crop) in enumerate(zip(pending_paths, pending_crops))
            ),
            ensure_ascii=True,
        )
        next_shard += 1
        pending_paths.clear()
        pending_crops.clear()
        pending_tokens.clear()

    to_decode = [Clip(video, video) for video in todo]  # id and source: the video path, the cache key
    bar = tqdm(total=len(todo), unit="clip", desc=description, disable=not progress)
    try:  # an abort (Ctrl-C, an encoder error) still writes the clips encoded so far
        for items in iter_decoded_batches(to_decode, num_frames, size, batch_size, num_workers, crops, crop_seed):
            good = [
                (clip.id, frames) for clip, frames, error in items if error is None
            ]  # frames [T, S, S, 3] or [1 + crops, ...]
            bad = [{"video": clip.id, "error": error} for clip, _, error in items if error is not None]
            if bad:
                append_jsonl(errors_path, bad, ensure_ascii=True)
                counts["errors"] += len(bad)
            if good:
                views = 1 + crops
                clips = np.concatenate(
                    [clip[None] if not crops else clip for _, clip in good]
                )  # [len(good) * views, T, ...]
                tokens = torch.cat(
                    [
                        encode_batch(clips[start : start + batch_size]).to("cpu", storage_type)
                        for start in range(0, len(clips), batch_size)
                    ]
                )
                for number, (path, _) in enumerate(good):
                    for crop in range(views):  # all rows of a clip go into the same shard
                        pending_paths.append(path)
                        pending_crops.append(crop)
                        pending_tokens.append(tokens[number * views + crop][None])
                    if len(pending_paths) >= shard_size:
                        flush_shard()
                counts["encoded"] += len(good)
            bar.update(len(items))
            bar.set_postfix(errors=counts["errors"])
            if on_batch is not None:
                on_batch(counts["encoded"] + counts["errors"])
    finally:
        flush_shard()
        bar.close()
    return counts
