"""Long videos made of moving-shapes clips, with their ground-truth timelines
(``prism-vlm make-long-shapes``): test material for reading a video as consecutive windows.

A long video is a sequence of *segments*; each segment shows ONE clip of a corpus split
(:func:`vlm.shapes.corpus.make_shapes_corpus`) for a random length in ``[min_segment_s, max_segment_s]``,
at the corpus's frame size and (by default) its fps.

Segment lengths
    Drawn uniformly over the whole frame counts in the bounds (a continuous length rounded to a frame),
    under the constraint that the rest of the video can still be cut into segments within the bounds, so
    the segments tile ``[0, duration)`` exactly and every one, the last included, is within the bounds. No
    boundary between two segments falls on a whole second (so none on a multiple of a 4, 8 or 10 s window)
    unless the bounds leave no other choice (or fps is 1). A video has at least ``unique_colours + 2``
    segments.

Segment frames: the clip's motion spread over the segment
    A segment of ``n`` frames shows the clip's trajectory from its first pose to its last, re-rendered
    from the clip's attributes at the fractional clip frame ``k * (T - 1) / (n - 1)`` for segment frame
    ``k`` (T = the clip's frame count; the renderer's poses are continuous in the frame index). So a
    12 s segment of a 2 s clip moving left shows the object moving left during the whole 12 s, 6x more
    slowly, and never leaving the frame; a growing object grows by the clip's factor over the segment.
    The segment's first and last frames are the clip's first and last frames, and a segment as long as
    the clip is exactly the clip. Every caption of the clip stays true (they name colours, shapes, the
    size class and the motion, never a speed). The factor applied to the clip's speed is the segment's
    ``speed_factor`` (``(T - 1) / (n - 1)``). Looping the clip instead would make a translating object
    jump back every clip length, so windows sampled a second apart would see it move both ways.

Colours (the rule the evaluation relies on)
    ``unique_colours`` (default 2) colours are drawn per video; each of them appears in exactly ONE
    segment, showing a one-object clip of that colour, placed at a random position; no other segment
    shows these colours. Of the other segments, the first two (in time) share a colour, so at least one
    colour repeats in every video; the rest are random clips of the split without the unique colours.
    Other colours may also happen to appear once: :func:`unique_colour_segments` lists every colour that
    appears in exactly one segment, a one-object one. Within a video a clip is not reused while unused
    ones remain, and two neighbouring segments never show the same clip when the split allows it.

Files in ``OUT`` (every path relative to ``OUT``)::

    OUT/long_videos.json    the settings (corpus seed/size/version, split, duration, segment bounds, seed, fps,
                            unique_colours, x264 settings): a rerun with other settings is refused
    OUT/long-III.mp4        H.264 (libx264, yuv420p, no B-frames), a keyframe every 2 s
    OUT/long-III.json       the ground truth: {"video", "duration", "fps", "num_frames", "frame_size", "split",
                            "index", "segments": [{"index", "start", "end", "start_frame", "end_frame", "clip",
                            "clip_video", "caption", "captions", "colours", "shapes", "motion", "count",
                            "speed_factor", "attributes"}]}
    OUT/long_videos.jsonl   one row per video: {"video", "truth", "duration", "num_segments", "unique_colours"}

Segment ``s`` covers frames ``[start_frame, end_frame)`` and times ``[start, end) = [start_frame / fps,
end_frame / fps)``; ``clip`` is the corpus clip id, ``clip_video`` its mp4 relative to the corpus folder,
``caption`` its first reference caption and ``captions`` all of them, ``attributes`` its record as in the
corpus's ``attributes.jsonl``. ``duration`` is ``num_frames / fps`` with ``num_frames = round(duration_s * fps)``.

Determinism and resuming: video ``i`` comes from ``numpy.random.default_rng([seed, i])`` and the corpus alone
(so ``count`` can grow on a rerun); x264 runs single-threaded without B-frames, so the same settings give
the same bytes. The mp4 is written first and the JSON last, each atomically: a video whose JSON exists is
finished and skipped on a rerun. Frames are rendered one at a time and streamed into the encoder.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from encoder.common.atomic_files import atomic_output_path, write_json
from encoder.common.errors import UsageError
from encoder.common.jsonl import iter_jsonl_strict, write_jsonl_atomically
from vlm.shapes.corpus import CORPUS_FILE, SPLITS, claim_folder, read_attributes
from vlm.shapes.render import PALETTE, ClipAttributes, coverage_mask, object_state, render_background

LONG_VIDEOS_VERSION = 1
SETTINGS_FILE = "long_videos.json"
INDEX_FILE = "long_videos.jsonl"
KEYFRAME_INTERVAL_S = 2  # a keyframe every 2 s: a window's frames are reached by short seeks


def long_video_name(index: int) -> str:
    """``long-III`` (the mp4 is ``long-III.mp4``, its ground truth ``long-III.json``)."""
    return f"long-{index:03d}"


# ---------------------------------------------------------------------------------------------
# The ground truth: reading it back
# ---------------------------------------------------------------------------------------------


@dataclass
class Segment:
    """One segment of a long video: one corpus clip shown over ``[start, end)`` seconds
    (frames ``[start_frame, end_frame)``)."""

    index: int
    start: float
    end: float
    start_frame: int
    end_frame: int
    clip: str  # the corpus clip id
    caption: str  # the clip's first reference caption
    captions: list[str]
    attributes: ClipAttributes
    speed_factor: float  # the segment's motion per frame / the clip's
    clip_video: str = ""  # the clip's mp4, relative to the corpus folder

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(obj.colour for obj in self.attributes.objects)

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(obj.shape for obj in self.attributes.objects)

    @property
    def motion(self) -> str:
        return self.attributes.motion

    @property
    def count(self) -> int:
        return self.attributes.count

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class LongVideoTruth:
    """A long video's ground truth (``long-III.json``); ``video`` is the mp4's path (resolved
    relative to the JSON's folder), ``segments`` in time order, tiling ``[0, duration)``."""

    path: Path  # the JSON file
    video: Path
    duration: float
    fps: int
    num_frames: int
    frame_size: int
    split: str
    segments: list[Segment] = field(default_factory=list)


def _segment_from_dict(row: dict) -> Segment:
    return Segment(
        index=int(row["index"]),
        start=float(row["start"]),
        end=float(row["end"]),
        start_frame=int(row["start_frame"]),
        end_frame=int(row["end_frame"]),
        clip=str(row["clip"]),
        caption=str(row["caption"]),
        captions=[str(c) for c in row.get("captions", [row["caption"]])],
        attributes=ClipAttributes.from_dict(row["attributes"]),
        speed_factor=float(row.get("speed_factor", 1.0)),
        clip_video=str(row.get("clip_video", "")),
    )


def read_long_video_truth(json_path: str | os.PathLike) -> LongVideoTruth:
    """Read ``long-III.json``. Raises ValueError naming the file when it is not such a record or its
    segments do not tile ``[0, duration)``."""
    path = Path(json_path)
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
        segments = [_segment_from_dict(s) for s in row["segments"]]
        truth = LongVideoTruth(
            path=path,
            video=path.parent / row["video"],
            duration=float(row["duration"]),
            fps=int(row["fps"]),
            num_frames=int(row["num_frames"]),
            frame_size=int(row["frame_size"]),
            split=str(row.get("split", "")),
            segments=segments,
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a long-video ground truth ({type(error).__name__}: {error})") from None
    frame = 0
    for number, segment in enumerate(segments):
        if segment.index != number or segment.start_frame != frame or segment.end_frame <= segment.start_frame:
            raise ValueError(f"{path}: segment {number} does not follow the previous one (frame {frame})")
        frame = segment.end_frame
    if frame != truth.num_frames:
        raise ValueError(f"{path}: the segments end at frame {frame}, the video has {truth.num_frames}")
    return truth


def read_long_videos(out_dir: str | os.PathLike) -> list[LongVideoTruth]:
    """The ground truths of a ``make-long-shapes`` folder, in the order of its ``long_videos.jsonl``."""
    index = Path(out_dir) / INDEX_FILE
    if not index.is_file():
        raise FileNotFoundError(f"no {INDEX_FILE} in {out_dir}: not a make-long-shapes folder")
    return [read_long_video_truth(index.parent / row["truth"]) for _, row in iter_jsonl_strict(index)]


def segment_at(truth: LongVideoTruth, t: float) -> Segment | None:
    """The segment shown at time ``t`` (seconds; ``start <= t < end``), None outside ``[0, duration)``."""
    if not truth.segments or not 0.0 <= t < truth.segments[-1].end:
        return None
    position = bisect.bisect_right([s.start for s in truth.segments], t) - 1
    return truth.segments[position] if position >= 0 else None


def unique_colour_segments(truth: LongVideoTruth) -> dict[str, Segment]:
    """``{colour: segment}`` for every colour that appears in exactly one segment of the video, that
    segment showing one object (so "When does the <colour> object appear?" has one answer), in time order."""
    appearances = Counter(colour for segment in truth.segments for colour in set(segment.colours))
    return {
        segment.colours[0]: segment
        for segment in truth.segments
        if segment.count == 1 and appearances[segment.colours[0]] == 1
    }


def one_object_segments(truth: LongVideoTruth) -> list[Segment]:
    """The segments showing one object (where "What colour is the object at <time>?" has one answer)."""
    return [segment for segment in truth.segments if segment.count == 1]


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def segment_frames(attributes: ClipAttributes | dict, num_frames: int) -> Iterator[np.ndarray]:
    """The clip's trajectory spread over ``num_frames`` frames, one uint8 ``[S, S, 3]`` frame at a time:
    frame ``k`` shows the clip at the fractional frame ``k * (T - 1) / (num_frames - 1)`` (the middle
    frame when ``num_frames`` is 1). With ``num_frames == T`` these are exactly ``render_clip``'s frames."""
    if isinstance(attributes, dict):
        attributes = ClipAttributes.from_dict(attributes)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    size, last = attributes.frame_size, attributes.num_frames - 1
    background = render_background(attributes.background_seed, size)
    colours = [np.asarray(PALETTE[obj.colour], dtype=np.float32) for obj in attributes.objects]
    for k in range(num_frames):
        position = k * last / (num_frames - 1) if num_frames > 1 else attributes.middle_frame
        frame = background.copy()  # as render_clip draws a frame: objects over the background, in order
        for obj, colour in zip(attributes.objects, colours):
            alpha = coverage_mask(obj.shape, object_state(obj, position, attributes.middle_frame), size)
            frame = frame * (1.0 - alpha[..., None]) + colour * alpha[..., None]
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def write_mp4_stream(
    frames: Iterable[np.ndarray],
    path: str | os.PathLike,
    fps: int,
    frame_size: int,
    crf: int = 18,
    preset: str = "medium",
    keyframe_interval: int | None = None,
) -> int:
    """Encode uint8 ``[S, S, 3]`` RGB frames as they come (memory holds one) into an H.264 mp4 with the
    corpus's settings (libx264, yuv420p, one thread, no B-frames: see ``encode_mp4``) and a keyframe every
    ``keyframe_interval`` frames (None: every :data:`KEYFRAME_INTERVAL_S` seconds), atomically. Returns
    the number of frames written."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with atomic_output_path(path) as partial, av.open(str(partial), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width = stream.height = frame_size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {
            "crf": str(crf),
            "preset": preset,
            "threads": "1",
            "g": str(keyframe_interval or KEYFRAME_INTERVAL_S * fps),
            "x264-params": "bframes=0",
        }
        for frame in frames:
            if frame.shape != (frame_size, frame_size, 3) or frame.dtype != np.uint8:
                raise ValueError(
                    f"frames must be uint8 [{frame_size}, {frame_size}, 3], got {frame.dtype} {frame.shape}"
                )
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
            written += 1
        for packet in stream.encode():
            container.mux(packet)
    return written


# ---------------------------------------------------------------------------------------------
# Planning a video: segment lengths and clips
# ---------------------------------------------------------------------------------------------


def _splittable(frames: int, min_frames: int, max_frames: int, at_least: int) -> bool:
    """Whether ``frames`` can be cut into ``>= at_least`` (and >= 1) segments of ``[min, max]`` frames."""
    if frames < 1:
        return False
    return max(at_least, 1, -(-frames // max_frames)) <= frames // min_frames


def segment_lengths(
    total: int, min_frames: int, max_frames: int, at_least: int, fps: int, rng: np.random.Generator
) -> list[int]:
    """Frame counts of the segments of a ``total``-frame video (see the module docstring): each in
    ``[min_frames, max_frames]``, at least ``at_least`` of them, summing to ``total``, no inner boundary
    on a whole second where another length is possible."""
    if not _splittable(total, min_frames, max_frames, at_least):
        raise ValueError(f"{total} frames cannot be cut into >= {at_least} segments of {min_frames}-{max_frames}")
    lengths: list[int] = []
    position, remaining = 0, total
    while True:
        needed = at_least - len(lengths)
        if remaining <= max_frames and needed <= 1:
            lengths.append(remaining)
            return lengths
        candidates = [
            n
            for n in range(min_frames, min(max_frames, remaining) + 1)
            if _splittable(remaining - n, min_frames, max_frames, needed - 1)
        ]
        off_second = [n for n in candidates if (position + n) % fps != 0]
        pool = off_second or candidates
        length = pool[int(rng.integers(len(pool)))]
        lengths.append(length)
        position, remaining = position + length, remaining - length


def _colours(clip: ClipAttributes) -> set[str]:
    return {obj.colour for obj in clip.objects}


def choose_clips(
    num_segments: int, clips: Sequence[ClipAttributes], unique_colours: int, rng: np.random.Generator
) -> list[ClipAttributes]:
    """One clip per segment following the colour rule of the module docstring. Raises UsageError when
    the clips cannot follow it (too few one-object colours, or no two clips sharing another colour)."""
    if num_segments < unique_colours + 2:
        raise ValueError(f"need >= unique_colours + 2 = {unique_colours + 2} segments, got {num_segments}")
    one_object: dict[str, list[ClipAttributes]] = defaultdict(list)
    for clip in clips:
        if clip.count == 1:
            one_object[clip.objects[0].colour].append(clip)
    available = [colour for colour in PALETTE if one_object[colour]]
    if len(available) < unique_colours:
        raise UsageError(
            f"the split has one-object clips of {len(available)} colours ({', '.join(available) or 'none'}); "
            f"unique_colours={unique_colours} needs that many: lower it or use a larger split"
        )
    for _ in range(100):
        chosen = [available[int(i)] for i in rng.choice(len(available), unique_colours, replace=False)]
        pool = [clip for clip in clips if not _colours(clip) & set(chosen)]
        shared = Counter(colour for clip in pool for colour in _colours(clip))
        partnered = [clip for clip in pool if any(shared[colour] >= 2 for colour in _colours(clip))]
        if partnered:
            break
    else:
        raise UsageError(
            f"in {len(clips)} clips, no two clips share a colour besides {unique_colours} unique colours: "
            "use a larger split or lower unique_colours"
        )

    slots: list[ClipAttributes | None] = [None] * num_segments
    unique_positions = sorted(int(p) for p in rng.choice(num_segments, unique_colours, replace=False))
    for position, colour in zip(unique_positions, chosen):
        candidates = one_object[colour]
        slots[position] = candidates[int(rng.integers(len(candidates)))]
    first, second = [p for p in range(num_segments) if slots[p] is None][:2]
    slots[first] = partnered[int(rng.integers(len(partnered)))]
    partners = [c for c in pool if c.id != slots[first].id and _colours(c) & _colours(slots[first])]
    slots[second] = partners[int(rng.integers(len(partners)))]

    used = {slot.id for slot in slots if slot is not None}
    for position in range(num_segments):
        if slots[position] is not None:
            continue
        neighbours = {slots[p].id for p in (position - 1, position + 1) if 0 <= p < num_segments and slots[p]}
        candidates = (
            [c for c in pool if c.id not in used and c.id not in neighbours]
            or [c for c in pool if c.id not in neighbours]
            or pool
        )
        slots[position] = candidates[int(rng.integers(len(candidates)))]
        used.add(slots[position].id)
    return slots


def plan_long_video(
    index: int,
    clips: Sequence[ClipAttributes],
    captions: dict[str, list[str]],
    *,
    duration_s: float,
    min_segment_s: float,
    max_segment_s: float,
    fps: int,
    unique_colours: int = 2,
    seed: int = 0,
    split: str = "",
) -> dict:
    """Video ``index``'s ground-truth record (what ``long-III.json`` holds), from ``default_rng([seed,
    index])`` and the clips alone."""
    total, min_frames, max_frames = _frame_bounds(duration_s, min_segment_s, max_segment_s, fps)
    rng = np.random.default_rng([seed, index])
    lengths = segment_lengths(total, min_frames, max_frames, unique_colours + 2, fps, rng)
    chosen = choose_clips(len(lengths), clips, unique_colours, rng)
    segments, frame = [], 0
    for number, (length, clip) in enumerate(zip(lengths, chosen)):
        clip_captions = captions[clip.id]
        segments.append(
            {
                "index": number,
                "start": frame / fps,
                "end": (frame + length) / fps,
                "start_frame": frame,
                "end_frame": frame + length,
                "clip": clip.id,
                "clip_video": clip.video,
                "caption": clip_captions[0],
                "captions": list(clip_captions),
                "colours": [obj.colour for obj in clip.objects],
                "shapes": [obj.shape for obj in clip.objects],
                "motion": clip.motion,
                "count": clip.count,
                "speed_factor": (clip.num_frames - 1) / (length - 1) if length > 1 else 0.0,
                "attributes": clip.to_dict(),
            }
        )
        frame += length
    return {
        "video": f"{long_video_name(index)}.mp4",
        "duration": total / fps,
        "fps": fps,
        "num_frames": total,
        "frame_size": chosen[0].frame_size,
        "split": split,
        "index": index,
        "segments": segments,
    }


def _frame_bounds(duration_s: float, min_segment_s: float, max_segment_s: float, fps: int) -> tuple[int, int, int]:
    """(total frames, min segment frames, max segment frames); UsageError when they do not fit together."""
    for name, value in (("duration_s", duration_s), ("min_segment_s", min_segment_s), ("max_segment_s", max_segment_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")
    if min_segment_s > max_segment_s:
        raise UsageError(f"min_segment_s ({min_segment_s}) must be <= max_segment_s ({max_segment_s})")
    total = round(duration_s * fps)
    min_frames = max(1, math.ceil(min_segment_s * fps - 1e-9))
    max_frames = math.floor(max_segment_s * fps + 1e-9)
    if max_frames < min_frames:
        raise UsageError(
            f"no whole number of frames at {fps} fps lies in [{min_segment_s}, {max_segment_s}] s: widen the bounds"
        )
    return total, min_frames, max_frames


def check_long_video_settings(
    duration_s: float, min_segment_s: float, max_segment_s: float, fps: int, unique_colours: int
) -> None:
    """Raise UsageError (naming the setting) when a ``duration_s`` video cannot be cut into
    ``>= unique_colours + 2`` segments of ``[min_segment_s, max_segment_s]`` at ``fps``."""
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise UsageError(f"fps must be a positive int, got {fps!r}")
    if isinstance(unique_colours, bool) or not isinstance(unique_colours, int) or not 0 <= unique_colours:
        raise UsageError(f"unique_colours must be an int >= 0, got {unique_colours!r}")
    if unique_colours > len(PALETTE):
        raise UsageError(f"unique_colours must be <= {len(PALETTE)} (the colours there are), got {unique_colours}")
    total, min_frames, max_frames = _frame_bounds(duration_s, min_segment_s, max_segment_s, fps)
    if not _splittable(total, min_frames, max_frames, unique_colours + 2):
        raise UsageError(
            f"a {total / fps:g} s video cannot be cut into {unique_colours + 2} or more segments (unique_colours + 2) "
            f"of {min_frames / fps:g}-{max_frames / fps:g} s at {fps} fps: change the duration or the segment bounds"
        )


# ---------------------------------------------------------------------------------------------
# Writing the videos
# ---------------------------------------------------------------------------------------------


def _corpus_description(corpus: Path) -> tuple[dict | None, dict]:
    """(the corpus's identity for the settings file, its config) from ``corpus.json`` (None, {} without one)."""
    path = corpus / CORPUS_FILE
    if not path.is_file():
        return None, {}
    description = json.loads(path.read_text(encoding="utf-8"))
    identity = {key: description.get(key) for key in ("generator", "version", "num_clips", "seed", "first_index")}
    return identity, description.get("config", {})


def _read_captions(corpus: Path) -> dict[str, list[str]]:
    path = corpus / "captions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no captions.jsonl in {corpus}: not a make-shapes corpus")
    captions = {}
    for line_number, row in iter_jsonl_strict(path):
        caption = row.get("caption")
        if "id" not in row or not caption:
            raise ValueError(f"{path}:{line_number}: no id or caption")
        captions[str(row["id"])] = [caption] if isinstance(caption, str) else list(caption)
    return captions


def _unique_colours(segments: list[dict]) -> list[str]:
    """The colours :func:`unique_colour_segments` lists, from the segments' records."""
    appearances = Counter(colour for segment in segments for colour in set(segment["colours"]))
    return [s["colours"][0] for s in segments if s["count"] == 1 and appearances[s["colours"][0]] == 1]


def _prepare_folder(out: Path, settings: dict) -> None:
    claim_folder(
        out,
        SETTINGS_FILE,
        settings,
        mismatch="holds long videos of other settings (corpus, split, duration, segment bounds, seed, fps or "
        "unique colours)",
        kind="a make-long-shapes folder",
    )


def make_long_videos(
    corpus_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    count: int,
    duration_s: float,
    min_segment_s: float = 2.0,
    max_segment_s: float = 12.0,
    seed: int = 0,
    fps: int | None = None,
    unique_colours: int = 2,
    progress: bool = False,
    on_video: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write ``count`` long videos of clips of ``split`` of the corpus at ``corpus_dir`` into
    ``out_dir`` with their ground truth (layout and rules in the module docstring). Returns the mp4
    paths, in order.

    ``fps``: None takes the corpus's. ``unique_colours``: colours shown in exactly one (one-object)
    segment of each video. Resumable: videos whose JSON exists are kept; ``on_video(mp4 path)`` is
    called after each video written now. A folder holding other settings' videos or anything else
    raises :class:`~vlm.shapes.corpus.CorpusFolderError` and is left untouched; settings that do not
    fit together (or a split too small for the colour rule) raise :class:`UsageError`.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    corpus, out = Path(corpus_dir), Path(out_dir)
    clips = read_attributes(corpus, split)
    if not clips:
        raise UsageError(f"the corpus at {corpus} has no clips in the split {split!r}")
    sizes = {clip.frame_size for clip in clips}
    if len(sizes) != 1:
        raise UsageError(f"the split {split!r} mixes frame sizes {sorted(sizes)}")
    fps = clips[0].fps if fps is None else fps
    check_long_video_settings(duration_s, min_segment_s, max_segment_s, fps, unique_colours)
    captions = _read_captions(corpus)
    missing = [clip.id for clip in clips if clip.id not in captions]
    if missing:
        raise ValueError(f"{corpus / 'captions.jsonl'} lacks the clips {missing[:5]}")
    identity, config = _corpus_description(corpus)
    crf, preset = int(config.get("crf", 18)), str(config.get("preset", "medium"))
    settings = json.loads(
        json.dumps(
            {
                "generator": "prism-vlm make-long-shapes",
                "version": LONG_VIDEOS_VERSION,
                "corpus": identity,
                "split": split,
                "duration_s": duration_s,
                "min_segment_s": min_segment_s,
                "max_segment_s": max_segment_s,
                "seed": seed,
                "fps": fps,
                "frame_size": sizes.pop(),
                "unique_colours": unique_colours,
                "crf": crf,
                "preset": preset,
                "keyframe_interval": KEYFRAME_INTERVAL_S * fps,
            }
        )
    )
    _prepare_folder(out, settings)

    from tqdm.auto import tqdm

    names = [long_video_name(i) for i in range(count)]
    done = [(out / f"{name}.json").is_file() for name in names]
    rows = []
    with tqdm(total=count, initial=sum(done), unit="video", desc="make-long-shapes", disable=not progress) as bar:
        for index, (name, finished) in enumerate(zip(names, done)):
            if finished:
                truth = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
            else:
                truth = plan_long_video(
                    index,
                    clips,
                    captions,
                    duration_s=duration_s,
                    min_segment_s=min_segment_s,
                    max_segment_s=max_segment_s,
                    fps=fps,
                    unique_colours=unique_colours,
                    seed=seed,
                    split=split,
                )
                frames = (
                    frame
                    for segment in truth["segments"]
                    for frame in segment_frames(segment["attributes"], segment["end_frame"] - segment["start_frame"])
                )
                written = write_mp4_stream(
                    frames, out / truth["video"], fps, truth["frame_size"], crf=crf, preset=preset
                )
                if written != truth["num_frames"]:
                    raise RuntimeError(f"{name}: wrote {written} frames, planned {truth['num_frames']}")
                write_json(out / f"{name}.json", truth)
                bar.update(1)
                if on_video is not None:
                    on_video(out / truth["video"])
            rows.append(
                {
                    "video": truth["video"],
                    "truth": f"{name}.json",
                    "duration": truth["duration"],
                    "num_segments": len(truth["segments"]),
                    "unique_colours": _unique_colours(truth["segments"]),
                }
            )
    write_jsonl_atomically(out / INDEX_FILE, rows, ensure_ascii=True)
    return [out / row["video"] for row in rows]
