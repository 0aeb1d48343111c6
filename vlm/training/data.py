"""Training data for the glue: captions, QA pairs and conversations from JSONL manifests and Hugging
Face datasets, a weighted mixture of them, seeded crops, and cached encoder tokens.

Reading (:func:`load_examples`) happens before any model is loaded, so bad input fails fast:
a missing file, an empty data set or a column that does not exist raises
:class:`TrainingDataError` naming the file and the reason; rows whose video file is missing (or,
when training from a feature cache, not in the cache / listed there as unreadable) are skipped and
reported (:class:`SkippedVideo`). Videos that exist but cannot be decoded are found when first
visited: the visit takes a seeded replacement example of the same source and the video is
reported then. Conversation rows that cannot be trained on (see ``vlm.convert.conversations``: no assistant
turn, roles out of order, a video marker in a later turn, empty text) are skipped and reported the
same way, by reason.

Order (:class:`ExampleStream`): an endless sequence of positions 0, 1, 2, ...; position ``p`` picks a
source by the mixture weights and the next example of that source (each source is visited in a
fresh seeded permutation per epoch). Everything random about a visit -- the source, the example,
which caption of a list, the crop -- is a function of (seed, position) only, never of a global RNG,
worker process or process count. So a run resumed from the position of its checkpoint, or split
over several processes, sees exactly the same examples.

Frames: training visits decode each frame's centre crop at ``crop_source_size(frame_size)`` (346
for 288) and cut a random ``frame_size`` square (the same for all frames of a clip); evaluation
uses the plain centre crop at ``frame_size``. From a feature cache written with ``crops=K``
(``prism-vlm features --crops K``) a training visit picks one of the K stored random crops; from
a cache without crops training uses the centre crop (no crop augmentation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoder.common.errors import PrismVlmError
from encoder.common.extras import require
from encoder.common.jsonl import iter_jsonl_strict
from encoder.video.clips import Clip, DatasetVideo, decode_clip, is_saved_dataset
from vlm.convert.conversations import ConversationError, read_conversation
from vlm.training.config import DataSource

MAX_REPLACEMENTS = 20
_BLOCK = 4096  # positions whose sources are drawn together (vectorised)


class TrainingDataError(PrismVlmError, ValueError):
    """Training or validation data that cannot be used (names the file and the reason)."""


@dataclass(frozen=True)
class Example:
    """One training example.

    video: a file path or a :class:`encoder.video.clips.DatasetVideo`; cache_key: the key of its tokens
    in the feature cache (None when not training from a cache); start/end: window in seconds;
    task: "caption" (``captions``: one or more), "qa" (``question``, ``answer``) or "chat"
    (``messages``: ((role, content), ...), a valid conversation ending with an assistant turn).
    """

    video: str | DatasetVideo
    task: str
    captions: tuple[str, ...] = ()
    question: str = ""
    answer: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    start: float | None = None
    end: float | None = None
    cache_key: str | None = None

    @property
    def name(self) -> str:
        return str(self.video)

    def chat_messages(self) -> list[dict]:
        """A chat example's conversation as chat messages: [{"role", "content"}, ...]."""
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class SkippedVideo:
    """A row left out of training: its source, video and why."""

    source: str
    video: str
    reason: str

    def to_dict(self) -> dict:
        return {"source": self.source, "video": self.video, "reason": self.reason}


@dataclass
class LoadedSource:
    """The usable examples of one :class:`DataSource` and what was skipped."""

    source: DataSource
    task: str
    examples: list[Example]
    rows: int
    skipped: list[SkippedVideo]

    def report(self) -> dict:
        reasons: dict[str, int] = {}
        for skipped in self.skipped:
            key = skipped.reason.split(":", 1)[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "path": self.source.path,
            "task": self.task,
            "weight": self.source.weight,
            "rows": self.rows,
            "examples": len(self.examples),
            "skipped": len(self.skipped),
            "skipped_by_reason": reasons,
        }


# ---------------------------------------------------------------------------------------------
# Reading sources
# ---------------------------------------------------------------------------------------------


class CacheIndex:
    """Looks videos up in a ``FeatureCache`` by their path as written or resolved (the cache keys are
    the paths ``prism-vlm features`` was given, which may be relative to another directory)."""

    def __init__(self, cache):
        self.cache = cache
        self._by_real = {os.path.realpath(key): key for key in cache.videos}
        self._errors = {os.path.realpath(key): error for key, error in cache.errors.items()}

    def key(self, video: str) -> str | None:
        if video in self.cache.entries:
            return video
        return self._by_real.get(os.path.realpath(video))

    def error(self, video: str) -> str | None:
        return self.cache.errors.get(video) or self._errors.get(os.path.realpath(video))


def _read_manifest(path: Path) -> tuple[list[dict], list[str]]:
    rows = []
    for number, row in iter_jsonl_strict(path, TrainingDataError):
        row["__line__"] = number
        rows.append(row)
    columns = sorted({key for row in rows for key in row if key != "__line__"})
    return rows, columns


def _read_dataset(source: DataSource):
    datasets = require("datasets", "train", "Hugging Face dataset sources (hf:NAME, saved datasets)")

    if source.path.startswith("hf:"):
        try:
            loaded = datasets.load_dataset(source.path[3:], split=source.split or "train")
        except Exception as error:  # the datasets library raises many types; keep the reason
            raise TrainingDataError(f"cannot load Hugging Face dataset {source.path[3:]!r}: {error}") from None
    else:
        loaded = datasets.load_from_disk(source.path)
        if isinstance(loaded, datasets.DatasetDict):
            split = source.split or (next(iter(loaded)) if len(loaded) == 1 else "train")
            if split not in loaded:
                raise TrainingDataError(f"{source.path} has no split {split!r} (it has {sorted(loaded)}); set split")
            loaded = loaded[split]
    video_column = source.column("video")
    if video_column in loaded.column_names and isinstance(loaded.features[video_column], datasets.Video):
        loaded = loaded.cast_column(video_column, datasets.Video(decode=False))
    return loaded


def _task(source: DataSource, columns: Sequence[str]) -> str:
    has = lambda name: source.column(name) in columns  # noqa: E731
    where = f"{source.path} (columns: {list(columns)})"
    if not has("video"):
        raise TrainingDataError(
            f"{where} has no video column {source.column('video')!r}; map it with columns={{'video': ...}}"
        )
    conversation_column = next((name for name in ("conversations", "messages") if has(name)), None)
    if source.task == "chat" or (source.task == "auto" and conversation_column is not None):
        if conversation_column is None:
            raise TrainingDataError(
                f"{where} has no {source.column('conversations')!r} or {source.column('messages')!r} "
                "column; map one with columns={'conversations': ...}"
            )
        return "chat"
    explicit_caption = "caption" in source.columns  # a mapped caption column means a caption source
    if source.task == "caption" or (source.task == "auto" and (has("caption") or explicit_caption)):
        if not has("caption"):
            raise TrainingDataError(
                f"{where} has no caption column {source.column('caption')!r}; map it with columns={{'caption': ...}}"
            )
        return "caption"
    missing = [name for name in ("question", "answer") if not has(name)]
    if missing:
        wanted = " and ".join(repr(source.column(name)) for name in missing)
        plural = "columns" if len(missing) > 1 else "column"
        hint = (
            "a caption column, or question and answer columns"
            if source.task == "auto"
            else "question and answer columns"
        )
        raise TrainingDataError(
            f"{where} has no {wanted} {plural}: the source needs {hint} (map them with columns=...)"
        )
    return "qa"


def _captions(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TrainingDataError(f"{where}: a caption must be a string or a list of strings, got {value!r}")
    return tuple(v.strip() for v in value if v.strip())


def load_examples(source: DataSource, cache_index: CacheIndex | None = None) -> LoadedSource:
    """Read one source. Rows with a missing video file (or one the cache lacks / lists as unreadable,
    or with no caption text) are skipped and listed; structural problems raise TrainingDataError."""
    path = Path(source.path)
    is_hub = source.path.startswith("hf:")
    if not is_hub and not path.exists():
        raise FileNotFoundError(f"training data not found: {source.path}")
    if is_hub or is_saved_dataset(path):
        dataset = _read_dataset(source)
        columns = list(dataset.column_names)
        task = _task(source, columns)
        wanted = [
            source.column(n)
            for n in ("video", "caption", "question", "answer", "conversations", "messages", "start", "end")
            if source.column(n) in columns
        ]
        video_column = source.column("video")
        values = dataset.select_columns([c for c in wanted if c != video_column]).to_dict()
        rows = []
        for number in range(len(dataset)):
            row = {column: values[column][number] for column in values}
            row["__line__"] = number
            rows.append(row)
        video_values, plain_paths = _dataset_video_values(dataset, video_column)
        base = None
    elif path.is_dir():
        raise TrainingDataError(f"{path} is a folder but not a saved Hugging Face dataset; give a JSONL manifest")
    else:
        rows, columns = _read_manifest(path)
        task = _task(source, columns) if rows else (source.task if source.task != "auto" else "caption")
        video_values, plain_paths = None, True
        base = path.parent
        dataset = None

    examples, skipped = [], []
    for index, row in enumerate(rows):
        where = f"{source.path}:{row['__line__']}" if base is not None else f"{source.path} row {row['__line__']}"
        if video_values is not None:
            video, key = DatasetVideo(dataset, index, source.column("video")), video_values[index]
        else:
            value = row.get(source.column("video"))
            if not isinstance(value, str) or not value:
                raise TrainingDataError(f"{where}: '{source.column('video')}' must be a video path, got {value!r}")
            video = str(Path(value) if Path(value).is_absolute() else base / value)
            key = video
        name = key or str(video)
        if task == "caption":
            captions = _captions(row.get(source.column("caption")), where)
            if not captions:
                skipped.append(SkippedVideo(source.path, name, "no caption: empty caption text"))
                continue
            fields = {"captions": captions}
        elif task == "chat":
            turns = row.get(source.column("conversations"))
            if turns is None:
                turns = row.get(source.column("messages"))
            try:
                messages = read_conversation(turns)
            except ConversationError as error:
                skipped.append(SkippedVideo(source.path, name, str(error)))
                continue
            fields = {"messages": tuple((m["role"], m["content"]) for m in messages)}
        else:
            question, answer = row.get(source.column("question")), row.get(source.column("answer"))
            if (
                not isinstance(question, str)
                or not question.strip()
                or not isinstance(answer, (str, int, float))
                or not str(answer).strip()
            ):
                skipped.append(SkippedVideo(source.path, name, "no question or answer: empty text"))
                continue
            fields = {"question": question.strip(), "answer": str(answer).strip()}
        cache_key = None
        if cache_index is not None:
            cache_key = cache_index.key(key) if key else None
            if cache_key is None:
                error = cache_index.error(key) if key else None
                reason = f"unreadable: {error}" if error else "not in the feature cache"
                skipped.append(SkippedVideo(source.path, name, reason))
                continue
        elif plain_paths and key and not Path(key).is_file():
            skipped.append(SkippedVideo(source.path, name, "missing: no such file"))
            continue
        start, end = row.get(source.column("start")), row.get(source.column("end"))
        examples.append(Example(video, task, start=start, end=end, cache_key=cache_key, **fields))
    return LoadedSource(source, task, examples, len(rows), skipped)


def _dataset_video_values(dataset, column: str) -> tuple[list[str | None], bool]:
    """(the video path of every row of a dataset -- None where a row holds bytes or frames only --,
    whether the column holds plain file paths)."""
    datasets = require("datasets", "train", "Hugging Face dataset sources (hf:NAME, saved datasets)")

    feature = dataset.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        return list(dataset[column]), True
    if isinstance(feature, datasets.Video):
        import pyarrow.compute

        return pyarrow.compute.struct_field(dataset.with_format("arrow")[column], "path").to_pylist(), False
    return [None] * len(dataset), False


def load_sources(sources: Sequence[DataSource], cache_index: CacheIndex | None, what: str) -> list[LoadedSource]:
    """Every source; TrainingDataError when none is given or none has a usable example."""
    if not sources:
        raise TrainingDataError(f"no {what} data given")
    loaded = [load_examples(source, cache_index) for source in sources]
    for item in loaded:
        if not item.examples:
            detail = (
                f"{item.rows} rows, all skipped ({item.report()['skipped_by_reason']})" if item.rows else "it is empty"
            )
            raise TrainingDataError(f"{what} data {item.source.path} has no usable example: {detail}")
    return loaded


# ---------------------------------------------------------------------------------------------
# Order
# ---------------------------------------------------------------------------------------------


class ExampleStream:
    """The endless, seeded order of (position, source, example index) of a weighted mixture."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every source needs examples, got sizes {list(sizes)}")
        self.sizes = [int(n) for n in sizes]
        weights = np.asarray(weights, dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.seed = int(seed)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def _block_sources(self, block: int) -> np.ndarray:
        if len(self.sizes) == 1:
            return np.zeros(_BLOCK, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 0, block])
        return rng.choice(len(self.sizes), size=_BLOCK, p=self.probabilities)

    def _index(self, source: int, visit: int) -> int:
        size = self.sizes[source]
        epoch = visit // size
        key = (source, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 2 * len(self.sizes):
                self._permutations.clear()
            self._permutations[key] = np.random.default_rng([self.seed, 1, source, epoch]).permutation(size)
        return int(self._permutations[key][visit % size])

    def iterate(self, start: int = 0) -> Iterator[tuple[int, int, int]]:
        """(position, source, example index) from ``start`` on, forever."""
        visits = np.zeros(len(self.sizes), dtype=np.int64)
        first_block = start // _BLOCK
        for block in range(first_block):  # visits made before the start's block
            visits += np.bincount(self._block_sources(block), minlength=len(self.sizes))
        block = first_block
        while True:
            sources = self._block_sources(block)
            for offset, source in enumerate(sources):
                position = block * _BLOCK + offset
                source = int(source)
                if position >= start:
                    yield position, source, self._index(source, int(visits[source]))
                visits[source] += 1
            block += 1


class ProcessShardSampler(torch.utils.data.Sampler):
    """This process's share of the stream: of every ``num_processes * micro_batch_size`` consecutive
    positions, process r takes the r-th run of ``micro_batch_size``. Endless."""

    def __init__(self, stream: ExampleStream, start: int, rank: int, num_processes: int, micro_batch_size: int):
        self.stream, self.start = stream, start
        self.rank, self.num_processes, self.micro_batch_size = rank, num_processes, micro_batch_size

    def __iter__(self):
        for item in self.stream.iterate(self.start):
            if (item[0] // self.micro_batch_size) % self.num_processes == self.rank:
                yield item


# ---------------------------------------------------------------------------------------------
# Loading visits
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSettings:
    """How visits get their video input: from ``cache`` (a FeatureCache) or decoded frames."""

    num_frames: int
    frame_size: int
    train_crops: bool = True


class GlueExamples(torch.utils.data.Dataset):
    """Loads one visit: index (position, source, example) -> dict with "position", "task", "target",
    "question", "video" (name), "tokens" [M, D] float32 or "clip" [T, S, S, 3] float32, and
    "skipped" (videos found unreadable on the way). ``training=False``: first caption, centre crop."""

    def __init__(
        self, sources: Sequence[LoadedSource], settings: VideoSettings, seed: int, cache=None, training: bool = True
    ):
        self.sources = [item.examples for item in sources]
        self.names = [item.source.path for item in sources]
        self.settings, self.seed, self.cache, self.training = settings, seed, cache, training

    def __len__(self) -> int:
        return sum(len(examples) for examples in self.sources)

    def _video(self, example: Example, rng: np.random.Generator) -> dict:
        from encoder.video.crops import crop_source_size, random_crop

        settings = self.settings
        if self.cache is not None:
            crop = 0
            if self.training and settings.train_crops and self.cache.num_crops:
                crop = int(rng.integers(1, self.cache.num_crops + 1))
            return {"tokens": self.cache.get(example.cache_key, crop).float()}
        clip = Clip(example.name, example.video, example.start, example.end)
        if self.training and settings.train_crops:
            wide = decode_clip(clip, settings.num_frames, crop_source_size(settings.frame_size))
            return {"clip": np.ascontiguousarray(random_crop(wide, settings.frame_size, rng))}
        return {"clip": decode_clip(clip, settings.num_frames, settings.frame_size)}

    def __getitem__(self, item: tuple[int, int, int]) -> dict:
        from encoder.video.decode import VideoDecodeError

        position, source, index = item
        examples = self.sources[source]
        skipped = []
        for attempt in range(MAX_REPLACEMENTS + 1):
            example = examples[index]
            rng = np.random.default_rng([self.seed, 2, position, attempt])
            try:
                video = self._video(example, rng)
                break
            except (FileNotFoundError, VideoDecodeError, ValueError, OSError) as error:
                skipped.append(
                    SkippedVideo(self.names[source], example.name, f"unreadable: {type(error).__name__}: {error}")
                )
                index = int(np.random.default_rng([self.seed, 3, position, attempt]).integers(len(examples)))
        else:
            raise TrainingDataError(
                f"{self.names[source]}: {MAX_REPLACEMENTS + 1} videos in a row could not be read; last: {skipped[-1].reason}"
            )
        messages = None
        if example.task == "caption":
            target = (
                example.captions[int(rng.integers(len(example.captions)))] if self.training else example.captions[0]
            )
        elif example.task == "chat":
            target, messages = "", example.chat_messages()
        else:
            target = example.answer
        return {
            "position": position,
            "task": example.task,
            "question": example.question,
            "target": target,
            "messages": messages,
            "video": example.name,
            "skipped": skipped,
            **video,
        }


def collate_visits(items: list[dict]) -> dict:
    """A micro-batch: lists of the text fields ("messages": a conversation or None per item), and
    "tokens" [B, M, D] or "clips" [B, T, S, S, 3]."""
    batch = {
        key: [item[key] for item in items] for key in ("position", "task", "question", "target", "messages", "video")
    }
    batch["skipped"] = [skipped for item in items for skipped in item["skipped"]]
    if "tokens" in items[0]:
        batch["tokens"] = torch.stack([item["tokens"] for item in items])
    else:
        batch["clips"] = torch.from_numpy(np.stack([item["clip"] for item in items]))
    return batch


def validation_items(sources: Sequence[LoadedSource], limit: int) -> list[tuple[int, int, int]]:
    """The first ``limit`` examples of the validation sources, in order (round-robin over sources)."""
    items, cursors = [], [0] * len(sources)
    while len(items) < limit and any(c < len(s.examples) for c, s in zip(cursors, sources)):
        for source, loaded in enumerate(sources):
            if cursors[source] < len(loaded.examples) and len(items) < limit:
                items.append((len(items), source, cursors[source]))
                cursors[source] += 1
    return items
