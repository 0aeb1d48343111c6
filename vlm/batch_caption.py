"""Caption a whole folder, manifest or Hugging Face dataset into a resumable JSONL file.

Output: one line per clip, ``{"video": ID, "caption": TEXT}``, appended and flushed (and synced to
disk) after every batch, so a killed run loses at most the batch in flight. Clips the decoder
rejects go to an errors file (``preds.errors.jsonl`` beside ``preds.jsonl``:
``{"video", "source", "error"}``) and the run carries on. Re-running the same command resumes:
every clip already in the output or in the errors file is skipped (delete the errors file to
retry them); a torn last line left by a killed writer is moved to OUT.torn before appending.

Several processes (``accelerate launch --num_processes N ...``) split the clips still to do:
process i takes every N-th one and writes ``preds.jsonl.part-i`` (and
``preds.errors.jsonl.part-i``); when all have finished, the main process appends the parts to the
output in input order, skipping clips already there, then deletes them. A run killed before the
merge resumes from the parts, so no clip is lost or written twice.

Clip ids (the "video" key, matched against reference files by ``eval-caption``):

* a folder: each video's path relative to the folder, without its extension ("video7010",
  "sub/clip"); searched recursively by extension;
* a JSONL manifest: the line's "id", else its "video" value as written; optional "start"/"end"
  (seconds) caption a window of the video; paths are relative to the manifest's folder;
* a text file: one path per line, the id is the line as written;
* a Hugging Face dataset: a directory written by ``Dataset.save_to_disk`` (or ``hf:NAME`` for
  ``datasets.load_dataset(NAME)``); the video column holds paths, ``{"path", "bytes"}`` video
  values, or frame arrays; ids from ``id_column``, else a "video_id" or "id" column, else the
  video path, else the row number.

With a feature cache (``encoder.features.FeatureCache``) captions come from cached encoder tokens
with no decoding; clips are looked up by their resolved path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from encoder.extras import require
from encoder.jsonl import JsonlAppender, read_jsonl_tolerant

MANIFEST_KEYS = ("video", "id", "start", "end")


class ClipListError(ValueError):
    """A folder, manifest or dataset of clips that cannot be read (names the file and the reason)."""


@dataclass(frozen=True)
class DatasetVideo:
    """A video stored in row ``row`` of a Hugging Face dataset's ``column`` (read lazily)."""

    dataset: object
    row: int
    column: str

    def __str__(self) -> str:
        return f"dataset row {self.row} ({self.column})"


@dataclass(frozen=True)
class Clip:
    """One clip to caption.

    id: its key in the output; source: a video path or a :class:`DatasetVideo`;
    start, end: the window to caption, in seconds (None: the whole video).
    """

    id: str
    source: str | DatasetVideo
    start: float | None = None
    end: float | None = None


class SingleProcess:
    """The process layout of a run without ``accelerate launch`` (the interface of accelerate's
    ``PartialState`` that :func:`caption_clips` uses)."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json", "dataset_info.json"))


def list_clips(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    video_column: str = "video",
    id_column: str | None = None,
    split: str | None = None,
) -> list[Clip]:
    """The clips of a folder, JSONL manifest, text list, saved HF dataset, ``hf:NAME``, or a list
    of video paths (ids: the paths as given). See the module docstring for ids. Duplicated ids
    raise ClipListError."""
    from encoder.video import VIDEO_SUFFIXES

    if not isinstance(source, (str, os.PathLike)):
        clips = [Clip(str(path), str(path)) for path in source]
    elif str(source).startswith("hf:"):
        datasets = require("datasets", "eval", "Hugging Face dataset sources (hf:NAME, saved datasets)")

        name = str(source)[3:]
        loaded = datasets.load_dataset(name, split=split or "test")
        clips = _dataset_clips(loaded, str(source), video_column, id_column)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such folder, manifest or dataset: {path}")
        if is_saved_dataset(path):
            clips = _dataset_clips(_load_saved_dataset(path, split), str(path), video_column, id_column)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            clips = [Clip(p.relative_to(path).with_suffix("").as_posix(), str(p)) for p in files]
        else:
            clips = _manifest_clips(path)
    _check_unique(clips, source)
    return clips


def clips_from_feature_cache(cache) -> list[Clip]:
    """Every clip of an ``encoder.features.FeatureCache`` (cached or listed as unreadable), named by
    its file name without extension; ClipListError when two share a name (then pass --videos)."""
    clips = [Clip(Path(key).stem, key) for key in [*cache.videos, *cache.errors]]
    _check_unique(clips, f"feature cache {cache.cache_dir} (name clips with --videos)")
    return clips


def _load_saved_dataset(path: Path, split: str | None):
    datasets = require("datasets", "eval", "Hugging Face dataset sources (hf:NAME, saved datasets)")

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise ClipListError(f"{path} holds splits {sorted(loaded)}; choose one with --split")
            split = next(iter(loaded))
        if split not in loaded:
            raise ClipListError(f"{path} has no split {split!r} (it has {sorted(loaded)})")
        loaded = loaded[split]
    return loaded


def _dataset_clips(dataset, name: str, video_column: str, id_column: str | None) -> list[Clip]:
    datasets = require("datasets", "eval", "Hugging Face dataset sources (hf:NAME, saved datasets)")

    if video_column not in dataset.column_names:
        raise ClipListError(f"{name} has no video column {video_column!r} (columns: {dataset.column_names}); pass --video-column")
    if isinstance(dataset.features[video_column], datasets.Video):
        dataset = dataset.cast_column(video_column, datasets.Video(decode=False))  # {"path", "bytes"}, decoded by us
    if id_column is None:
        id_column = next((c for c in ("video_id", "id") if c in dataset.column_names), None)
    elif id_column not in dataset.column_names:
        raise ClipListError(f"{name} has no id column {id_column!r} (columns: {dataset.column_names})")
    if id_column is not None:
        ids = [str(value) for value in dataset[id_column]]
    else:
        feature = dataset.features[video_column]
        if isinstance(feature, datasets.Value) and feature.dtype == "string":
            ids = [str(value) for value in dataset[video_column]]
        elif isinstance(feature, datasets.Video):  # the paths only, without reading every video's bytes into Python
            import pyarrow.compute

            paths = pyarrow.compute.struct_field(dataset.with_format("arrow")[video_column], "path").to_pylist()
            ids = [str(path or row) for row, path in enumerate(paths)]
        else:
            ids = [str(row) for row in range(len(dataset))]
    windows = [dataset[key] if key in dataset.column_names else [None] * len(dataset) for key in ("start", "end")]
    return [
        Clip(clip_id, DatasetVideo(dataset, row, video_column), windows[0][row], windows[1][row])
        for row, clip_id in enumerate(ids)
    ]


def _manifest_clips(path: Path) -> list[Clip]:
    clips = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".jsonl" or line.startswith("{"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ClipListError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("video"), str):
                    raise ClipListError(f"{path}:{line_number}: expected a JSON object with a string 'video' key")
                video = row["video"]
                clip_id = str(row.get("id", video))
                start, end = row.get("start"), row.get("end")
                for key, value in (("start", start), ("end", end)):
                    if value is not None and not isinstance(value, (int, float)):
                        raise ClipListError(f"{path}:{line_number}: '{key}' must be a number of seconds, got {value!r}")
            else:
                video, clip_id, start, end = line, line, None, None
            video_path = Path(video)
            resolved = video_path if video_path.is_absolute() else path.parent / video_path
            clips.append(Clip(clip_id, str(resolved), start, end))
    return clips


def _check_unique(clips: Sequence[Clip], source) -> None:
    seen: set[str] = set()
    for clip in clips:
        if clip.id in seen:
            raise ClipListError(f"{source}: clip id {clip.id!r} appears more than once")
        seen.add(clip.id)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def decode_clip(clip: Clip, num_frames: int, size: int) -> np.ndarray:
    """Frames of one clip: float32 [T, size, size, 3] in [0, 1]. Raises FileNotFoundError,
    encoder.video.VideoDecodeError or ValueError."""
    from encoder.video import load_clip

    source = clip.source
    if isinstance(source, DatasetVideo):
        value = source.dataset[source.row][source.column]
        if isinstance(value, dict) and value.get("bytes"):
            suffix = Path(value.get("path") or "video.mp4").suffix or ".mp4"
            with tempfile.TemporaryDirectory() as folder:
                temporary = Path(folder) / f"clip{suffix}"
                temporary.write_bytes(value["bytes"])
                return load_clip(temporary, num_frames=num_frames, size=size, start=clip.start, end=clip.end)
        if isinstance(value, dict):
            value = value.get("path")
        if value is None:
            raise ValueError(f"{source} holds no video")
        if not isinstance(value, str):
            value = np.asarray(value)  # frames [T, H, W, 3]
        return load_clip(value, num_frames=num_frames, size=size, start=clip.start, end=clip.end)
    return load_clip(source, num_frames=num_frames, size=size, start=clip.start, end=clip.end)


class ClipDecodeDataset(torch.utils.data.Dataset):
    """Decodes one clip per item: (clip, frames [T, S, S, 3] or None, error message or None)."""

    def __init__(self, clips: Sequence[Clip], num_frames: int, size: int):
        self.clips, self.num_frames, self.size = list(clips), num_frames, size

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        clip = self.clips[index]
        try:
            return clip, decode_clip(clip, self.num_frames, self.size), None
        except Exception as error:  # arguments are checked before any clip: what fails here is the clip
            return self.failed_item(index, f"{type(error).__name__}: {error}")

    def failed_item(self, index: int, message: str):
        return self.clips[index], None, message


def iter_decoded_batches(
    clips: Sequence[Clip], num_frames: int, size: int, batch_size: int, num_workers: int = 2
) -> Iterator[list[tuple[Clip, np.ndarray | None, str | None]]]:
    """Batches of (clip, frames or None, error or None), decoded by ``num_workers`` processes; a
    clip whose decoding process dies is an error item (``encoder.decode_workers``)."""
    from encoder.decode_workers import decoded_batches

    yield from decoded_batches(ClipDecodeDataset(clips, num_frames, size), batch_size, num_workers)


# ---------------------------------------------------------------------------------------------
# JSONL files
# ---------------------------------------------------------------------------------------------


def errors_path_for(output: str | os.PathLike) -> Path:
    """The default errors file beside an output file: preds.jsonl -> preds.errors.jsonl."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(stem + ".errors.jsonl")


def _part_paths(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".part-*"))


def _merge_parts(path: Path, clips: Sequence[Clip]) -> int:
    """Append the part files' lines to ``path`` in clip order (skipping ids already there), then
    delete the parts. Returns the number of lines appended."""
    parts = _part_paths(path)
    if not parts:
        return 0
    present = {row.get("video") for row in read_jsonl_tolerant(path)}
    pending: dict[str, dict] = {}
    for part in parts:
        for row in read_jsonl_tolerant(part):
            if row.get("video") not in present:
                pending.setdefault(row.get("video"), row)
    order = [clip.id for clip in clips if clip.id in pending]
    order += [key for key in pending if key not in set(order)]  # lines of clips no longer listed: kept
    writer = JsonlAppender(path)
    try:
        writer.write([pending[key] for key in order])
    finally:
        writer.close()
    for part in parts:
        part.unlink()
    return len(order)


# ---------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------


def caption_clips(
    model,
    clips: Sequence[Clip],
    output: str | os.PathLike,
    *,
    errors_path: str | os.PathLike | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    generation=None,
    num_frames: int | None = None,
    features=None,
    num_workers: int = 2,
    progress: bool = True,
    state=None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Caption every clip not yet in ``output`` (see the module docstring), batch by batch.

    model: a ``vlm.model.VideoLanguageModel``; features: an ``encoder.features.FeatureCache`` to
    caption from cached tokens instead of decoding; state: accelerate's ``PartialState`` when
    launched on several processes (default: one process); generation: ``vlm.generation.GenerationSettings``
    (greedy when None; max_new_tokens comes from ``max_new_tokens``); on_batch: called with the number of
    clips this process has finished after each batch. A second run on the same output while this one
    runs gets OutputBusyError (a lock file ``OUT.lock-RANK`` beside the output).
    Returns this process's counts {"captioned", "errors", "skipped"} ("merged" on the main
    process of a multi-process run: lines its merge appended).
    """
    from encoder.video import check_num_frames

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    # Checked before anything is read or written: a bad value must not be recorded against every clip.
    frames = check_num_frames(num_frames if num_frames is not None else model.config.num_frames)
    state = state or SingleProcess()
    output = Path(output)
    errors_path = Path(errors_path) if errors_path is not None else errors_path_for(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{output}.lock-{state.process_index}")  # a second run on the same output would caption the same clips
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputBusyError(f"{output} is being written by another run; wait for it to finish or choose another --out") from None
    try:
        return _caption_locked(model, clips, output, errors_path, frames, batch_size, max_new_tokens, generation, features,
                               num_workers, progress, state, on_batch)
    finally:
        lock.release()


def _caption_locked(model, clips, output, errors_path, frames, batch_size, max_new_tokens, generation, features, num_workers,
                    progress, state, on_batch) -> dict[str, int]:
    """The body of :func:`caption_clips`, run while holding this process's lock on the output."""
    from tqdm.auto import tqdm

    world, rank = state.num_processes, state.process_index
    # Everything already produced, by an earlier run of any process layout.
    done = set()
    for path in [output, errors_path, *_part_paths(output), *_part_paths(errors_path)]:
        done.update(row.get("video") for row in read_jsonl_tolerant(path))
    todo = [clip for clip in clips if clip.id not in done]
    mine = todo[rank::world]
    counts = {"captioned": 0, "errors": 0, "skipped": len(clips) - len(todo)}
    state.wait_for_everyone()  # every process has read the state before anyone writes

    if world > 1:
        captions_file, errors_file = Path(f"{output}.part-{rank}"), Path(f"{errors_path}.part-{rank}")
    else:
        captions_file, errors_file = output, errors_path
    writer, error_writer = JsonlAppender(captions_file), JsonlAppender(errors_file)
    description = "captioning" if world == 1 else f"captioning [{rank + 1}/{world}]"
    bar = tqdm(total=len(mine), unit="clip", desc=description, disable=not progress, position=rank if world > 1 else None)
    try:
        if features is not None:
            batches = _cached_token_batches(mine, features, batch_size)
        else:
            batches = _decoded_frame_batches(mine, frames, model.config.frame_size, batch_size, num_workers)
        for good, good_inputs, bad in batches:
            if good:
                if features is not None:
                    captions = model.caption(video_tokens=good_inputs, max_new_tokens=max_new_tokens, generation=generation)
                else:
                    captions = model.caption(clips=good_inputs, max_new_tokens=max_new_tokens, generation=generation)
                writer.write([{"video": clip.id, "caption": caption} for clip, caption in zip(good, captions)])
            error_writer.write(bad)
            counts["captioned"] += len(good)
            counts["errors"] += len(bad)
            bar.update(len(good) + len(bad))
            if counts["errors"]:
                bar.set_postfix(errors=counts["errors"])
            if on_batch is not None:
                on_batch(counts["captioned"] + counts["errors"])
    finally:
        bar.close()
        writer.close()
        error_writer.close()

    state.wait_for_everyone()
    if state.is_main_process:
        counts["merged"] = _merge_parts(output, clips)
        _merge_parts(errors_path, clips)
    state.wait_for_everyone()
    return counts


class OutputBusyError(ValueError):
    """Another run holds the lock on this output file."""


def _error_row(clip: Clip, error: str) -> dict:
    return {"video": clip.id, "source": str(clip.source), "error": error}


def _decoded_frame_batches(clips, num_frames, size, batch_size, num_workers):
    """(good clips, frames [b, T, S, S, 3], error rows) per batch of decoded clips."""
    for items in iter_decoded_batches(clips, num_frames, size, batch_size, num_workers):
        good = [clip for clip, frames, _ in items if frames is not None]
        frames = torch.from_numpy(np.stack([f for _, f, _ in items if f is not None])) if good else None
        bad = [_error_row(clip, error) for clip, frames_, error in items if frames_ is None]
        yield good, frames, bad


def _cached_token_batches(clips, features, batch_size):
    """(good clips, tokens [b, M, D], error rows) per batch of clips looked up in a feature cache."""
    for start in range(0, len(clips), batch_size):
        good, tokens, bad = [], [], []
        for clip in clips[start : start + batch_size]:
            key = str(clip.source)
            if key in features:
                good.append(clip)
                tokens.append(features.get(key).float())
            elif key in features.errors:
                bad.append(_error_row(clip, f"unreadable when the feature cache was built: {features.errors[key]}"))
            else:
                bad.append(_error_row(clip, f"not in the feature cache {features.cache_dir}"))
        yield good, (torch.stack(tokens) if tokens else None), bad
