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

Clips come from ``encoder.video.clips.list_clips`` (a folder, manifest or dataset; see there for the clip
ids, the "video" key matched against reference files by ``eval-caption``) and are decoded by
``encoder.video.clips.iter_decoded_batches``.

With a feature cache (``encoder.videoprism.features.FeatureCache``) captions come from cached encoder tokens
with no decoding; clips are looked up by their resolved path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from encoder.common.errors import PrismVlmError
from encoder.common.jsonl import JsonlAppender, read_jsonl_tolerant
from encoder.video.clips import Clip, iter_decoded_batches


class SingleProcess:
    """The process layout of a run without ``accelerate launch`` (the interface of accelerate's
    ``PartialState`` that :func:`caption_clips` uses)."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


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
    assistant,
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

    assistant: a ``vlm.inference.assistant.VideoAssistant``; features: an ``encoder.videoprism.features.FeatureCache`` to
    caption from cached tokens instead of decoding; state: accelerate's ``PartialState`` when
    launched on several processes (default: one process); generation: ``vlm.inference.generation.GenerationSettings``
    (greedy when None; max_new_tokens comes from ``max_new_tokens``); on_batch: called with the number of
    clips this process has finished after each batch. A second run on the same output while this one
    runs gets OutputBusyError (a lock file ``OUT.lock-RANK`` beside the output).
    Returns this process's counts {"captioned", "errors", "skipped"} ("merged" on the main
    process of a multi-process run: lines its merge appended).
    """
    from encoder.video.decode import check_num_frames

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    # Checked before anything is read or written: a bad value must not be recorded against every clip.
    frames = check_num_frames(num_frames if num_frames is not None else assistant.config.num_frames)
    state = state or SingleProcess()
    output = Path(output)
    errors_path = Path(errors_path) if errors_path is not None else errors_path_for(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(
        f"{output}.lock-{state.process_index}"
    )  # a second run on the same output would caption the same clips
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputBusyError(
            f"{output} is being written by another run; wait for it to finish or choose another --out"
        ) from None
    try:
        return _caption_locked(
            assistant,
            clips,
            output,
            errors_path,
            frames,
            batch_size,
            max_new_tokens,
            generation,
            features,
            num_workers,
            progress,
            state,
            on_batch,
        )
    finally:
        lock.release()


def _caption_locked(
    assistant,
    clips,
    output,
    errors_path,
    frames,
    batch_size,
    max_new_tokens,
    generation,
    features,
    num_workers,
    progress,
    state,
    on_batch,
) -> dict[str, int]:
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
    bar = tqdm(
        total=len(mine), unit="clip", desc=description, disable=not progress, position=rank if world > 1 else None
    )
    try:
        if features is not None:
            batches = _cached_token_batches(mine, features, batch_size)
        else:
            batches = _decoded_frame_batches(mine, frames, assistant.config.frame_size, batch_size, num_workers)
        for good, good_inputs, bad in batches:
            if good:
                if features is not None:
                    captions = assistant.caption(
                        video_tokens=good_inputs, max_new_tokens=max_new_tokens, generation=generation
                    )
                else:
                    captions = assistant.caption(
                        clips=good_inputs, max_new_tokens=max_new_tokens, generation=generation
                    )
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


class OutputBusyError(PrismVlmError, ValueError):
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
