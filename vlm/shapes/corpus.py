"""The synthetic moving-shapes corpus: sampling clip attributes, splits with a compositional
hold-out, H.264 encoding, and the files ``prism-vlm make-shapes`` writes.

Layout of a corpus folder ``OUT`` (every video path in a JSONL file is relative to THAT file's
folder, the rule ``encoder.video.clips`` and ``vlm.evaluation.data`` follow, so the folder can be moved as a whole)::

    OUT/corpus.json                  generator version, seed, config, held-out pairs, split counts, answers
    OUT/attributes.jsonl             one clip per line: ClipAttributes.to_dict() (objects, motion, seeds, split)
    OUT/captions.jsonl               {"id", "video": "videos/SPLIT/ID.mp4", "caption": [str, ...], "split"}
    OUT/qa.jsonl                     {"question_id", "id", "video", "question", "answer", "type", "split"}
    OUT/conversations.jsonl          {"id", "video", "conversations": [{"from": "human"|"gpt", "value"}, ...], "split"}
                                     (LLaVA's layout; "<video>\n" opens the first human turn)
    OUT/videos/SPLIT/ID.mp4          H.264 (libx264, yuv420p), T frames of S x S at `fps`
    OUT/SPLIT/captions.jsonl         the split's captions, "video": "../videos/SPLIT/ID.mp4"
    OUT/SPLIT/qa.jsonl               the split's questions, same paths
    OUT/SPLIT/conversations.jsonl    the split's conversations, same paths
    OUT/SPLIT/refs.jsonl             {"video": ID, "captions": [...]} for `prism-vlm eval-caption`

SPLIT is ``train``, ``val``, ``test`` or ``test_compositional``. Determinism: clip ``i``'s attributes,
captions, questions and conversation come from ``numpy.random.default_rng([seed, i, stream])`` alone, the splits
and held-out pairs from ``[seed, ...]`` alone; the encoder runs single-threaded, so the same seed and
config give byte-identical files (with the same libx264 build).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from encoder.common.atomic_files import atomic_output_path, write_text_atomically
from encoder.common.configs import config_from_dict, config_to_dict
from encoder.common.errors import PrismVlmError, UsageError
from encoder.common.jsonl import iter_jsonl_strict, write_jsonl_atomically
from vlm.shapes.conversations import conversation, llava_conversation
from vlm.shapes.language import ANSWER_VOCABULARY, captions, questions
from vlm.shapes.render import (
    MOTIONS,
    PALETTE,
    ROTATION_DIRECTIONS,
    ROTATION_INVARIANT_SHAPES,
    SHAPES,
    TRANSLATIONS,
    ClipAttributes,
    ObjectAttributes,
    render_clip,
    with_derived_fields,
)

# 2: hearts centred on their area centroid (version 1 used the bounding-box centre); 3: no B-frames in the
# H.264 stream (`encode_mp4`), so that the same frames always give the same bytes
CORPUS_VERSION = 3
SPLITS: tuple[str, ...] = ("train", "val", "test", "test_compositional")
CORPUS_FILE = "corpus.json"
_SPLIT_STREAM, _HELDOUT_STREAM = 1_000_001, 1_000_002  # rng streams beside the per-clip ones
_ATTRIBUTE_STREAM, _LANGUAGE_STREAM, _CONVERSATION_STREAM = 0, 1, 2
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


class CorpusFolderError(PrismVlmError, ValueError):
    """The output folder holds something else than this corpus (nothing in it is touched)."""


@dataclass
class ShapesConfig:
    """How the corpus is drawn. Lengths are fractions of the frame side ``frame_size`` unless named *_px."""

    num_frames: int = 16
    frame_size: int = 64
    fps: int = 8
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(PALETTE)
    motions: tuple[str, ...] = MOTIONS
    two_object_fraction: float = 0.3  # clips with two objects (different shapes and colours, one shared motion)
    # middle-frame circumradius of "small" objects (x frame_size); at 0.09 a tiny from-scratch encoder
    # learned shape barely above chance (docs/REPRODUCTION.md)
    small_radius: float = 0.13
    large_radius: float = 0.19  # ... of "large" ones; two-object clips use "small" only
    radius_jitter: float = 0.1  # radius x U(1 - jitter, 1 + jitter)
    travel: tuple[float, float] = (0.34, 0.44)  # distance a translating object covers over the clip
    growth: tuple[float, float] = (1.8, 2.4)  # radius ratio last/first frame (growing) or first/last (shrinking)
    rotation_speed: tuple[float, float] = (7.0, 11.0)  # degrees per frame
    edge_margin: float = 0.06  # the centre stays this far inside the frame at every frame
    num_heldout_pairs: int = 6  # colour-shape pairs that never occur in train/val/test (compositional test)
    compositional_fraction: float = 0.1  # of all clips, in test_compositional
    val_fraction: float = 0.1  # of the other clips
    test_fraction: float = 0.1  # of the other clips
    num_captions: int = 5  # phrasings per clip
    crf: int = 18  # libx264 constant rate factor (lower: better quality, bigger files)
    preset: str = "medium"  # libx264 preset

    def __post_init__(self) -> None:
        self.shapes, self.colours, self.motions = tuple(self.shapes), tuple(self.colours), tuple(self.motions)
        self.travel, self.growth = tuple(self.travel), tuple(self.growth)
        self.rotation_speed = tuple(self.rotation_speed)
        for name, values, known in (
            ("shapes", self.shapes, SHAPES),
            ("colours", self.colours, tuple(PALETTE)),
            ("motions", self.motions, MOTIONS),
        ):
            unknown = [v for v in values if v not in known]
            if unknown or len(set(values)) != len(values) or not values:
                raise ValueError(f"{name} must be distinct names from {known}, got {values}")
        if len(self.shapes) < 2 or len(self.colours) < 2:
            raise ValueError("need at least 2 shapes and 2 colours")
        if self.num_frames < 2 or self.frame_size < 16 or self.frame_size % 2:
            raise ValueError(
                f"need num_frames >= 2 and an even frame_size >= 16, got {self.num_frames}, {self.frame_size}"
            )
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        for name in ("two_object_fraction", "compositional_fraction", "val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction > 1.0:
            raise ValueError("val_fraction + test_fraction must be <= 1")
        if not 0 <= self.num_heldout_pairs <= len(self.colours):
            raise ValueError(
                f"num_heldout_pairs must be in [0, {len(self.colours)}] (one per colour), got {self.num_heldout_pairs}"
            )
        if self.compositional_fraction > 0 and self.num_heldout_pairs == 0:
            raise ValueError("compositional_fraction > 0 needs num_heldout_pairs > 0")
        if not 0 < self.small_radius <= self.large_radius or not 0 <= self.radius_jitter < 1:
            raise ValueError("need 0 < small_radius <= large_radius and 0 <= radius_jitter < 1")
        for name, low_bound in (("travel", 0.0), ("growth", 1.0), ("rotation_speed", 0.0)):
            low, high = getattr(self, name)
            if not low_bound < low <= high:
                raise ValueError(f"{name} must be (low, high) with {low_bound} < low <= high, got {(low, high)}")
        if self.two_object_fraction > 0 and len(self.shapes) < 2:
            raise ValueError("two-object clips need two shapes")
        if not 1 <= self.num_captions <= 6:
            raise ValueError(f"num_captions must be in [1, 6], got {self.num_captions}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {X264_PRESETS}, got {self.preset!r}")
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be an int in [0, 51], got {self.crf!r}")
        lower, upper = self.centre_range()
        if lower >= upper:
            raise ValueError(
                f"objects cannot stay in a {self.frame_size}px frame: travel {self.travel} and edge margin "
                f"{self.edge_margin} leave no room for the centre"
            )

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ShapesConfig":
        return config_from_dict(cls, values)

    # -- geometry shared by every motion (so the middle frame does not reveal the motion) --------

    def max_frames_from_middle(self) -> int:
        middle = self.num_frames // 2
        return max(middle, self.num_frames - 1 - middle)

    def centre_range(self) -> tuple[float, float]:
        """Interval (pixels) of the middle-frame centre on BOTH axes, for EVERY motion: wide enough
        margins for the fastest translation to keep the centre ``edge_margin`` inside the frame."""
        half_travel = self.max_frames_from_middle() * self.travel[1] * self.frame_size / (self.num_frames - 1)
        lower = half_travel + self.edge_margin * self.frame_size
        return lower, self.frame_size - lower

    def max_growth_from_middle(self) -> float:
        """The largest radius factor any object reaches relative to its middle frame."""
        return self.growth[1] ** (self.max_frames_from_middle() / (self.num_frames - 1))


def heldout_pairs(config: ShapesConfig, seed: int) -> list[tuple[str, str]]:
    """The (colour, shape) pairs kept out of train/val/test: distinct colours, shapes spread evenly
    (so every colour and every shape still occurs in training)."""
    rng = np.random.default_rng([seed, _HELDOUT_STREAM])
    colours = [config.colours[i] for i in rng.permutation(len(config.colours))]
    shapes = [config.shapes[i] for i in rng.permutation(len(config.shapes))]
    return sorted((colours[k], shapes[k % len(shapes)]) for k in range(config.num_heldout_pairs))


def split_counts(num_clips: int, config: ShapesConfig) -> dict[str, int]:
    """Exact clips per split: ``compositional_fraction`` of all, then val/test fractions of the rest."""
    compositional = round(num_clips * config.compositional_fraction)
    rest = num_clips - compositional
    val, test = round(rest * config.val_fraction), round(rest * config.test_fraction)
    return {"train": rest - val - test, "val": val, "test": test, "test_compositional": compositional}


def assign_splits(num_clips: int, config: ShapesConfig, seed: int) -> list[str]:
    """The split of each clip index (a seeded shuffle of the exact counts)."""
    counts = split_counts(num_clips, config)
    labels = np.array([split for split in SPLITS for _ in range(counts[split])], dtype=object)
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(num_clips)
    return [str(label) for label in labels[np.argsort(order)]]


def clip_id(index: int) -> str:
    return f"clip_{index:06d}"


def sample_clip_attributes(
    index: int, split: str, config: ShapesConfig, seed: int, heldout: Sequence[tuple[str, str]]
) -> ClipAttributes:
    """Clip ``index``'s attributes, from ``default_rng([seed, index, 0])`` alone.

    The motion is drawn first, uniformly; middle-frame positions, sizes and orientations are drawn
    from the SAME distribution whatever the motion (a single frame carries no motion cue beyond the
    rule that circles never rotate). ``test_compositional`` clips have at least one object whose
    (colour, shape) is held out; every other clip has none.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    rng = np.random.default_rng([seed, index, _ATTRIBUTE_STREAM])
    heldout_set = set(heldout)
    all_pairs = [(c, s) for c in config.colours for s in config.shapes]
    allowed = [pair for pair in all_pairs if pair not in heldout_set]
    compositional = split == "test_compositional"
    if compositional and not heldout_set:
        raise ValueError("a test_compositional clip needs held-out pairs")

    def can_rotate(pair: tuple[str, str]) -> bool:
        return pair[1] not in ROTATION_INVARIANT_SHAPES

    motions = [
        m for m in config.motions if m != "rotating" or any(map(can_rotate, heldout if compositional else allowed))
    ]
    count = 2 if rng.random() < config.two_object_fraction else 1
    motion = motions[int(rng.integers(len(motions)))]
    first_pool = list(heldout) if compositional else allowed
    if motion == "rotating":
        first_pool, allowed = [p for p in first_pool if can_rotate(p)], [p for p in allowed if can_rotate(p)]
    pairs = [first_pool[int(rng.integers(len(first_pool)))]]
    if count == 2:
        others = [p for p in allowed if p[0] != pairs[0][0] and p[1] != pairs[0][1]]
        if not others:
            raise ValueError("no second colour-shape pair differs from the first in both colour and shape")
        pairs.append(others[int(rng.integers(len(others)))])
        if rng.random() < 0.5:
            pairs.reverse()

    size = config.frame_size
    sizes = ["small"] * count if count == 2 else [("small", "large")[int(rng.integers(2))]]
    radii = [
        (config.small_radius if name == "small" else config.large_radius)
        * size
        * rng.uniform(1 - config.radius_jitter, 1 + config.radius_jitter)
        for name in sizes
    ]
    positions = _sample_positions(rng, radii, config)
    angles = rng.uniform(0.0, 360.0, size=count)

    rotation = None
    if motion in TRANSLATIONS:
        speed = rng.uniform(*config.travel) * size / (config.num_frames - 1)
    elif motion in ("growing", "shrinking"):
        speed = rng.uniform(*config.growth) ** (1.0 / (config.num_frames - 1))
    elif motion == "rotating":
        speed = rng.uniform(*config.rotation_speed)
        rotation = ROTATION_DIRECTIONS[int(rng.integers(2))]
    else:
        speed = 0.0
    objects = [
        with_derived_fields(
            ObjectAttributes(
                shape=shape,
                colour=colour,
                size=size_name,
                radius=float(radius),
                position=(float(x), float(y)),
                angle=float(angle),
                motion=motion,
                speed=float(speed),
                rotation=rotation,
            ),
            config.num_frames,
        )
        for (colour, shape), size_name, radius, (x, y), angle in zip(pairs, sizes, radii, positions, angles)
    ]
    name = clip_id(index)
    return ClipAttributes(
        id=name,
        split=split,
        num_frames=config.num_frames,
        frame_size=size,
        fps=config.fps,
        background_seed=int(rng.integers(2**31 - 1)),
        motion=motion,
        objects=objects,
        video=f"videos/{split}/{name}.mp4",
    )


def _sample_positions(rng: np.random.Generator, radii: list[float], config: ShapesConfig) -> list[tuple[float, float]]:
    """Middle-frame centres, uniform in the motion-independent square; two objects far enough apart
    not to touch at any frame under any motion (rejection sampling)."""
    lower, upper = config.centre_range()
    if len(radii) == 1:
        return [tuple(rng.uniform(lower, upper, size=2))]
    min_distance = config.max_growth_from_middle() * sum(radii) + 1.0
    for _ in range(10_000):
        points = rng.uniform(lower, upper, size=(2, 2))
        if math.dist(points[0], points[1]) >= min_distance:
            return [tuple(p) for p in points]
    raise UsageError(
        f"cannot place two objects {min_distance:.1f}px apart in a {config.frame_size}px frame; "
        "lower two_object_fraction, small_radius or growth, or raise frame_size"
    )


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def encode_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int, crf: int = 18, preset: str = "medium") -> None:
    """Write uint8 ``[T, H, W, 3]`` RGB frames as an H.264 mp4 (libx264, yuv420p, one thread, one
    keyframe), atomically: the file appears complete or not at all.

    No B-frames (``bframes=0``; I and P frames only): with x264's default B-frames the same frames
    at these tiny sizes now and then encoded to different bytes within one process (1-4 of 6 clips
    over 40-60 encodes each, depending on what the process had allocated before), which broke the
    corpus's byte-determinism; without them every encode of the same frames was identical (720
    encodes). Turning off the macroblock tree instead (``mbtree=0``) was deterministic too, but
    made still clips flicker (last vs first frame 1.5 levels apart instead of 0.1) and the files
    40% larger."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(path) as partial, av.open(str(partial), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {
            "crf": str(crf),
            "preset": preset,
            "threads": "1",
            "g": str(len(frames)),
            "x264-params": "bframes=0",
        }
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _render_and_encode(job: tuple[dict, str, int, str]) -> str:
    """Worker: render one clip from its attributes dict and write its mp4. Returns the path."""
    attributes, path, crf, preset = job
    encode_mp4(render_clip(attributes), path, fps=attributes["fps"], crf=crf, preset=preset)
    return path


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


def corpus_description(num_clips: int, seed: int, config: ShapesConfig, first_index: int = 0) -> dict:
    """What ``corpus.json`` holds: enough to regenerate the corpus exactly (``first_index`` only
    when it is not 0, so corpora written before it existed keep their description)."""
    description = {
        "generator": "prism-vlm make-shapes",
        "version": CORPUS_VERSION,
        "num_clips": num_clips,
        "seed": seed,
        "config": config.to_dict(),
        "heldout_pairs": [list(pair) for pair in heldout_pairs(config, seed)],
        "split_counts": split_counts(num_clips, config),
        "answers": {kind: list(words) for kind, words in ANSWER_VOCABULARY.items()},
        "video_paths": "relative to the folder of the JSONL file that names them",
    }
    if first_index:
        description["first_index"] = first_index
    return description


def clip_records(
    index: int, split: str, config: ShapesConfig, seed: int, heldout
) -> tuple[ClipAttributes, list[str], list[dict], list[dict]]:
    """Clip ``index``'s attributes, captions, questions and conversation (chat messages),
    deterministic for ``seed``."""
    attributes = sample_clip_attributes(index, split, config, seed, heldout)
    language_rng = np.random.default_rng([seed, index, _LANGUAGE_STREAM])
    clip_captions = captions(attributes, language_rng, config.num_captions)
    clip_questions = questions(attributes, language_rng)
    clip_conversation = conversation(
        attributes, clip_captions, np.random.default_rng([seed, index, _CONVERSATION_STREAM])
    )
    return attributes, clip_captions, clip_questions, clip_conversation


def make_shapes_corpus(
    out_dir: str | os.PathLike,
    num_clips: int,
    seed: int = 0,
    config: ShapesConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    on_clip: Callable[[str], None] | None = None,
    first_index: int = 0,
) -> Path:
    """Generate the corpus into ``out_dir`` (layout in the module docstring); returns ``out_dir``.

    Resumable: a folder already holding the same corpus (same ``corpus.json``) keeps its finished
    mp4s and only renders the missing ones; a folder holding anything else raises
    :class:`CorpusFolderError` and is left untouched. The JSONL files are written last, atomically.
    ``workers`` > 1 renders and encodes in that many processes. ``on_clip(path)`` is called after
    each mp4 is written.

    ``first_index``: the corpus holds clips ``first_index .. first_index + num_clips - 1`` of the
    seed's stream (each clip is a function of (seed, index) alone). Two corpora of one seed whose
    index ranges do not overlap share no clip but keep the same held-out compositional pairs, e.g.
    a large all-train pretraining corpus (val/test/compositional fractions 0) beside an evaluation
    corpus starting at 0.
    """
    config = config or ShapesConfig()
    if isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"num_clips must be a positive int, got {num_clips!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
        raise ValueError(f"first_index must be an int >= 0, got {first_index!r}")
    out = Path(out_dir)
    description = json.loads(json.dumps(corpus_description(num_clips, seed, config, first_index)))  # as read back
    _prepare_folder(out, description)

    heldout = [tuple(pair) for pair in description["heldout_pairs"]]
    splits = assign_splits(num_clips, config, seed)
    records = [clip_records(first_index + i, split, config, seed, heldout) for i, split in enumerate(splits)]

    jobs = [
        (attributes.to_dict(), str(out / attributes.video), config.crf, config.preset)
        for attributes, *_ in records
        if not (out / attributes.video).is_file()
    ]
    from tqdm.auto import tqdm

    with ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=num_clips, initial=num_clips - len(jobs), unit="clip", desc="make-shapes", disable=not progress)
        )
        if workers == 1 or len(jobs) < 2:
            finished = map(_render_and_encode, jobs)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            finished = pool.map(_render_and_encode, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
        for path in finished:
            bar.update(1)
            if on_clip is not None:
                on_clip(path)

    _write_manifests(out, records)
    return out


def claim_folder(out: Path, settings_file: str, settings: dict, *, mismatch: str, kind: str) -> None:
    """Make ``out`` a generator's folder: a new or empty folder gets ``settings`` written to ``settings_file``;
    a folder whose ``settings_file`` holds the same settings is resumed; anything else is refused
    (CorpusFolderError: ``mismatch`` says what differs, ``kind`` what the folder should have been)."""
    path = out / settings_file
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CorpusFolderError(f"{path}: not valid JSON ({error.msg}); use another folder") from None
        if existing != settings:
            raise CorpusFolderError(f"{path} {mismatch}; use another output folder")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CorpusFolderError(f"{out} exists and is not an empty folder or {kind}")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(settings, indent=2) + "\n")


def _prepare_folder(out: Path, description: dict) -> None:
    claim_folder(
        out,
        CORPUS_FILE,
        description,
        mismatch="describes another corpus (different seed, size, config or version)",
        kind="a corpus of this generator",
    )


def _write_manifests(out: Path, records: list[tuple[ClipAttributes, list[str], list[dict], list[dict]]]) -> None:
    attributes_rows, caption_rows, qa_rows, conversation_rows = [], [], [], []
    by_split: dict[str, dict[str, list[dict]]] = {
        s: {"captions": [], "qa": [], "refs": [], "conversations": []} for s in SPLITS
    }
    for attributes, clip_captions, clip_questions, clip_conversation in records:
        video, split, name = attributes.video, attributes.split, attributes.id
        in_split = f"../{video}"  # the same file, relative to OUT/SPLIT/
        attributes_rows.append(attributes.to_dict())
        caption_rows.append({"id": name, "video": video, "caption": clip_captions, "split": split})
        by_split[split]["captions"].append({"id": name, "video": in_split, "caption": clip_captions})
        by_split[split]["refs"].append({"video": name, "captions": clip_captions})
        turns = llava_conversation(clip_conversation)
        conversation_rows.append({"id": name, "video": video, "conversations": turns, "split": split})
        by_split[split]["conversations"].append({"id": name, "video": in_split, "conversations": turns})
        for number, qa in enumerate(clip_questions):
            row = {"question_id": f"{name}_q{number}", "id": name, "video": video, **qa, "split": split}
            qa_rows.append(row)
            by_split[split]["qa"].append({**row, "video": in_split})
    write_jsonl_atomically(out / "attributes.jsonl", attributes_rows, ensure_ascii=True)
    write_jsonl_atomically(out / "captions.jsonl", caption_rows, ensure_ascii=True)
    write_jsonl_atomically(out / "qa.jsonl", qa_rows, ensure_ascii=True)
    write_jsonl_atomically(out / "conversations.jsonl", conversation_rows, ensure_ascii=True)
    for split, files in by_split.items():
        (out / split).mkdir(exist_ok=True)
        for kind, rows in files.items():
            write_jsonl_atomically(out / split / f"{kind}.jsonl", rows, ensure_ascii=True)


def read_attributes(corpus_dir: str | os.PathLike, split: str | None = None) -> list[ClipAttributes]:
    """The clips of a corpus folder (optionally one split), in index order."""
    path = Path(corpus_dir) / "attributes.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no attributes.jsonl in {corpus_dir}: not a make-shapes corpus")
    clips = []
    for line_number, row in iter_jsonl_strict(path):
        try:
            clip = ClipAttributes.from_dict(row)
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"{path}:{line_number}: not a clip record ({error})") from None
        if split is None or clip.split == split:
            clips.append(clip)
    return clips
