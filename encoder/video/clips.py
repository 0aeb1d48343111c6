"""Clip records, the listing of clip sources, and the dataset that decodes clips.

The one place that knows what a clip is (:class:`Clip`: an id, a video file or a row of a Hugging
Face dataset, an optional window) and how sources list them; feature extraction
(``encoder.videoprism.features``), captioning (``vlm.inference.batch_caption``), QA and retrieval evaluation and
training data all read clips through here.

Listing:

* :func:`list_clips`: clips with ids, for outputs keyed by clip (captions):

  * a folder: each video's path relative to the folder, without its extension ("video7010",
    "sub/clip"); searched recursively by extension (``encoder.video.decode.VIDEO_SUFFIXES``);
  * a JSONL manifest: the line's "id", else its "video" value as written; optional "start"/"end"
    (seconds) select a window of the video; paths are relative to the manifest's folder;
  * a text file: one path per line, the id is the line as written;
  * a Hugging Face dataset: a directory written by ``Dataset.save_to_disk`` (or ``hf:NAME`` for
    ``datasets.load_dataset(NAME)``); the video column holds paths, ``{"path", "bytes"}`` video
    values, or frame arrays; ids from ``id_column``, else a "video_id" or "id" column, else the
    video path, else the row number;

* :func:`list_videos`: the distinct video paths of a folder or manifest, for outputs keyed by path
  (feature caches, video indexes).

Decoding: :class:`ClipDecodeDataset` decodes one clip per item and reports a bad clip as an error
item instead of raising; :func:`iter_decoded_batches` runs it in worker processes
(``encoder.video.workers``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoder.common.errors import PrismVlmError
from encoder.common.extras import require
from encoder.common.jsonl import iter_jsonl_strict
from encoder.video.crops import cache_crop_offsets, crop_clip, crop_source_size
from encoder.video.decode import IMAGE_SUFFIXES, VIDEO_SUFFIXES, decode_frames, load_clip
from encoder.video.workers import decoded_batches


class ClipListError(PrismVlmError, ValueError):
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
    """One clip to decode (to caption, encode or embed).

    id: its key in outputs (captions, feature caches, error rows); source: a video path or a
    :class:`DatasetVideo`; start, end: the window to decode, in seconds (None: the whole video).
    """

    id: str
    source: str | DatasetVideo
    start: float | None = None
    end: float | None = None


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and any(
        (path / name).is_file() for name in ("state.json", "dataset_dict.json", "dataset_info.json")
    )


def list_clips(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    video_column: str = "video",
    id_column: str | None = None,
    split: str | None = None,
) -> list[Clip]:
    """The clips of a folder, JSONL manifest, text list, saved HF dataset, ``hf:NAME``, or a list
    of video paths (ids: the paths as given). See the module docstring for ids. Duplicated ids
    raise ClipListError."""
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
            clips = [Clip(p.relative_to(path).with_suffix("").as_posix(), str(p)) for p in _folder_videos(path)]
        else:
            clips = _manifest_clips(path)
    _check_unique(clips, source)
    return clips


def list_videos(source: str | os.PathLike) -> list[str]:
    """Video paths from a directory (recursive, by extension), a JSONL manifest (key "video"; paths
    relative to the manifest's folder) or a text file with one path per line; each path once, in
    listed order (a folder's sorted).

    Raises FileNotFoundError for a missing source and ValueError naming the file and line for a
    row that is not UTF-8, not a JSON object with a non-empty string "video", or for a source that
    lists no video at all."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no such folder or manifest: {source}")
    if source.is_dir():
        videos = [str(p) for p in _folder_videos(source)]
        if not videos:
            raise ClipListError(f"{source}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in this folder")
        return videos
    videos = [clip.source for clip in _manifest_clips(source)]
    if not videos:
        raise ClipListError(f"{source}: lists no videos")
    return list(dict.fromkeys(videos))


def _folder_videos(folder: Path) -> list[Path]:
    """The video files under ``folder`` (recursive, by suffix), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def clips_from_feature_cache(cache) -> list[Clip]:
    """Every clip of an ``encoder.videoprism.features.FeatureCache`` (cached or listed as unreadable), named by
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
        raise ClipListError(
            f"{name} has no video column {video_column!r} (columns: {dataset.column_names}); pass --video-column"
        )
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


def _manifest_clips(path: Path, error: type[Exception] = ClipListError) -> list[Clip]:
    """The clips of a JSONL manifest (``{"video", ["id", "start", "end"]}`` rows) or of a text file of
    paths, one per line; video paths relative to the manifest's folder. A bad row raises ``error``
    naming ``PATH:LINE``."""
    clips = []
    for number, row in iter_jsonl_strict(path, error, plain_lines_as="video"):
        video = row.get("video")
        if not isinstance(video, str) or not video.strip():
            raise error(f"{path}:{number}: 'video' must be a non-empty path string, got {video!r}")
        start, end = row.get("start"), row.get("end")
        for key, value in (("start", start), ("end", end)):
            if value is not None and not isinstance(value, (int, float)):
                raise error(f"{path}:{number}: '{key}' must be a number of seconds, got {value!r}")
        video_path = Path(video)
        resolved = video_path if video_path.is_absolute() else path.parent / video_path
        clips.append(Clip(str(row.get("id", video)), str(resolved), start, end))
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
    encoder.video.decode.VideoDecodeError or ValueError."""
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
            raise ClipListError(f"{source} holds no video")
        if not isinstance(value, str):
            value = np.asarray(value)  # frames [T, H, W, 3]
        return load_clip(value, num_frames=num_frames, size=size, start=clip.start, end=clip.end)
    return load_clip(source, num_frames=num_frames, size=size, start=clip.start, end=clip.end)


class ClipDecodeDataset(torch.utils.data.Dataset):
    """Decodes one clip per item: (clip, frames or None, error message or None), never raising for
    a bad clip (the dataset contract of ``encoder.video.workers``).

    frames: float32 [T, size, size, 3] in [0, 1]; with ``crops`` > 0 (feature caches with training
    crops, see ``encoder.videoprism.features``) [1 + crops, T, size, size, 3]: the centre crop, then ``crops``
    random crops of the clip's centre crop at ``encoder.video.crops.crop_source_size(size)``, seeded by
    (crop_seed, the clip's video path, crop number); crops need clips whose source is a file path.
    An error message is "ExceptionType: message".
    """

    def __init__(self, clips: Sequence[Clip], num_frames: int, size: int, crops: int = 0, crop_seed: int = 0):
        self.clips, self.num_frames, self.size = list(clips), num_frames, size
        self.crops, self.crop_seed = crops, crop_seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        clip = self.clips[index]
        try:
            if not self.crops:
                return clip, decode_clip(clip, self.num_frames, self.size), None
            return clip, self._crops(clip), None
        except Exception as error:  # arguments are checked before any clip: what fails here is the clip
            return self.failed_item(index, f"{type(error).__name__}: {error}")

    def failed_item(self, index: int, message: str):
        return self.clips[index], None, message

    def _crops(self, clip: Clip) -> np.ndarray:
        """[1 + crops, T, size, size, 3]: the centre crop, then the seeded random crops."""
        path = clip.source
        if not isinstance(path, str):
            raise ValueError(f"training crops need a video file, not {path}")
        window = dict(start=clip.start, end=clip.end)
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            frames = load_clip(path, num_frames=self.num_frames, size=None, **window)
        else:
            frames = decode_frames(path, self.num_frames, **window)  # decoded once, resized twice
        source = crop_source_size(self.size)
        views = [load_clip(frames, num_frames=self.num_frames, size=self.size)]
        wide = load_clip(frames, num_frames=self.num_frames, size=source)
        for crop in range(1, self.crops + 1):
            top, left = cache_crop_offsets(path, crop, self.crop_seed, source, self.size)
            views.append(crop_clip(wide, top, left, self.size))
        return np.stack(views)


def iter_decoded_batches(
    clips: Sequence[Clip],
    num_frames: int,
    size: int,
    batch_size: int,
    num_workers: int = 2,
    crops: int = 0,
    crop_seed: int = 0,
) -> Iterator[list[tuple[Clip, np.ndarray | None, str | None]]]:
    """Batches of :class:`ClipDecodeDataset` items (clip, frames or None, error or None), decoded by
    ``num_workers`` processes; a clip whose decoding process dies is an error item
    (``encoder.video.workers``)."""
    yield from decoded_batches(ClipDecodeDataset(clips, num_frames, size, crops, crop_seed), batch_size, num_workers)
