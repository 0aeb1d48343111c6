"""The synthetic moving-shapes corpus (``prism-vlm make-shapes``): determinism, decodability,
answers that agree with what the decoded videos show, one-token answers, and the splits."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from encoder.video.clips import list_videos
from encoder.video.decode import load_clip
from vlm.shapes import (
    ANSWER_VOCABULARY,
    MOTIONS,
    PALETTE,
    SPLITS,
    ClipAttributes,
    CorpusFolderError,
    ShapesConfig,
    assign_splits,
    heldout_pairs,
    make_shapes_corpus,
    read_attributes,
    render_background,
    render_clip,
    sample_clip_attributes,
)
from vlm.shapes.corpus import encode_mp4, split_counts
from vlm.shapes.render import object_state

NUM_CLIPS = 64
SEED = 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_shapes_corpus(tmp_path_factory.mktemp("shapes") / "corpus", NUM_CLIPS, seed=SEED, progress=False)


@pytest.fixture(scope="module")
def clips(corpus) -> list[ClipAttributes]:
    return read_attributes(corpus)


@pytest.fixture(scope="module")
def decoded(corpus, clips) -> dict[str, np.ndarray]:
    """Every clip decoded by the project's decoder: uint8 [T, S, S, 3]."""
    return {
        clip.id: np.rint(load_clip(corpus / clip.video, num_frames=clip.num_frames, size=None) * 255).astype(np.uint8)
        for clip in clips
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_corpus_and_other_seed_differs(corpus, tmp_path):
    again = make_shapes_corpus(tmp_path / "again", NUM_CLIPS, seed=SEED, progress=False, workers=2)
    first, second = _files(corpus), _files(again)
    assert first.keys() == second.keys()
    assert sum(name.endswith(".mp4") for name in first) == NUM_CLIPS
    different = [name for name in first if first[name] != second[name]]
    assert different == [], f"files differ between two runs with the same seed: {different[:5]}"

    other = make_shapes_corpus(tmp_path / "other", NUM_CLIPS, seed=SEED + 1, progress=False)
    assert (other / "attributes.jsonl").read_bytes() != first["attributes.jsonl"]
    assert (other / "qa.jsonl").read_bytes() != first["qa.jsonl"]
    clip, other_clip = read_attributes(corpus)[0], read_attributes(other)[0]
    frames, other_frames = load_clip(corpus / clip.video, size=None), load_clip(other / other_clip.video, size=None)
    assert frames.shape == other_frames.shape
    assert np.abs(frames - other_frames).mean() > 0.01


def test_the_same_frames_always_encode_to_the_same_bytes(clips, tmp_path):
    """Within one (long-lived, memory-churned) process: with B-frames, x264 encoded identical frames
    to different bytes now and then, so `encode_mp4` writes I and P frames only."""
    for clip in clips[:8]:
        frames = render_clip(clip)
        encoded = set()
        for attempt in range(10):
            path = tmp_path / f"{clip.id}_{attempt}.mp4"
            encode_mp4(frames, path, fps=clip.fps)
            encoded.add(path.read_bytes())
        assert len(encoded) == 1, f"{clip.id}: {len(encoded)} different encodings of the same frames"
    assert b"bframes=0" in next(iter(encoded))


@pytest.mark.quick
def test_render_clip_depends_only_on_attributes(clips):
    clip = clips[0]
    first = render_clip(clip)
    second = render_clip(clip.to_dict())
    assert first.dtype == np.uint8 and first.shape == (clip.num_frames, clip.frame_size, clip.frame_size, 3)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, render_clip(clips[1]))


def test_rerun_resumes_and_keeps_finished_clips(corpus, tmp_path):
    out = make_shapes_corpus(tmp_path / "resume", 12, seed=SEED, progress=False)
    before = _files(out)
    victim = next(p for p in (out / "videos").rglob("*.mp4"))
    victim.unlink()
    rewritten = []
    make_shapes_corpus(out, 12, seed=SEED, progress=False, on_clip=rewritten.append)
    assert rewritten == [str(victim)]  # only the missing clip is rendered again
    assert _files(out) == before


def test_foreign_or_different_folder_is_refused_untouched(tmp_path):
    out = make_shapes_corpus(tmp_path / "a", 4, seed=1, progress=False)
    before = _files(out)
    with pytest.raises(CorpusFolderError, match="another corpus"):
        make_shapes_corpus(out, 4, seed=2, progress=False)
    with pytest.raises(CorpusFolderError, match="another corpus"):
        make_shapes_corpus(out, 4, seed=1, config=ShapesConfig(two_object_fraction=0.5), progress=False)
    assert _files(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CorpusFolderError, match="not an empty folder"):
        make_shapes_corpus(foreign, 4, seed=1, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------------------------- files and decoding


@pytest.mark.quick
def test_layout_and_manifests_resolve_from_anywhere(corpus, clips, monkeypatch, tmp_path):
    description = json.loads((corpus / "corpus.json").read_text())
    assert description["seed"] == SEED and description["num_clips"] == NUM_CLIPS
    assert ShapesConfig.from_dict(description["config"]) == ShapesConfig()
    monkeypatch.chdir(tmp_path)  # paths must not depend on the working directory
    for split in SPLITS:
        expected = sorted(str((corpus / clip.video).resolve()) for clip in clips if clip.split == split)
        listed = sorted(str(Path(p).resolve()) for p in list_videos(corpus / split / "captions.jsonl"))
        assert listed == expected, split
        assert all(Path(p).is_file() for p in listed)
        for row in _jsonl(corpus / split / "captions.jsonl"):
            assert isinstance(row["caption"], list) and row["caption"]
    assert sorted(list_videos(corpus / "captions.jsonl")) == sorted(str(corpus / clip.video) for clip in clips)
    for clip in clips:
        assert clip.video == f"videos/{clip.split}/{clip.id}.mp4"


@pytest.mark.quick
def test_qa_files_read_with_the_evaluation_reader(corpus, clips):
    from vlm.evaluation.data import read_qa

    for split in SPLITS:
        examples = read_qa(corpus / split / "qa.jsonl")
        assert len(examples) == 4 * sum(clip.split == split for clip in clips)
        assert all(Path(example.video).is_file() for example in examples)


def test_every_clip_is_h264_and_decodes_to_the_rendered_frames(corpus, clips, decoded):
    import av

    with av.open(str(corpus / clips[0].video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.frames in (0, clips[0].num_frames)
    for clip in clips:
        frames = decoded[clip.id]
        assert frames.shape == (clip.num_frames, clip.frame_size, clip.frame_size, 3)
        error = np.abs(frames.astype(np.float32) - render_clip(clip).astype(np.float32)).mean()
        assert error < 4.0, f"{clip.id}: decoded frames differ from the rendered ones by {error:.2f} on average"
    resized = load_clip(corpus / clips[0].video, num_frames=8, size=36)
    assert resized.shape == (8, 36, 36, 3) and resized.dtype == np.float32


# --------------------------------------------------------------------------------------------- answers vs. videos


def _object_pixels(clip: ClipAttributes, frames: np.ndarray) -> np.ndarray:
    """bool [T, S, S]: pixels of a decoded clip that differ clearly from the clip's background."""
    background = render_background(clip.background_seed, clip.frame_size)
    return np.abs(frames.astype(np.float32) - background[None]).max(axis=-1) > 45.0


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    distances = [np.linalg.norm(rgb - np.asarray(PALETTE[name], dtype=np.float32)) for name in names]
    return names[int(np.argmin(distances))]


def _referred_object(clip: ClipAttributes, qa: dict):
    """The object a question is about: the only one, or the one its shape (colour) names."""
    if len(clip.objects) == 1:
        return clip.objects[0]
    named = [o for o in clip.objects if f" {o.shape}?" in qa["question"] or f" {o.colour} " in qa["question"]]
    assert len(named) == 1, f"{clip.id}: ambiguous question {qa['question']!r}"
    return named[0]


@pytest.mark.quick
def test_answers_agree_with_attributes(corpus, clips):
    by_id = {clip.id: clip for clip in clips}
    rows = _jsonl(corpus / "qa.jsonl")
    assert Counter(row["type"] for row in rows) == {kind: NUM_CLIPS for kind in ("colour", "shape", "motion", "count")}
    for row in rows:
        clip = by_id[row["id"]]
        assert row["split"] == clip.split and row["video"] == clip.video
        if row["type"] == "colour":
            assert row["answer"] == _referred_object(clip, row).colour
            assert row["answer"] not in row["question"]
        elif row["type"] == "shape":
            assert row["answer"] == _referred_object(clip, row).shape
            assert row["answer"] not in row["question"]
        elif row["type"] == "motion":
            assert row["answer"] == clip.motion and all(o.motion == clip.motion for o in clip.objects)
        else:
            assert row["answer"] == ("one", "two")[clip.count - 1]
    for row in _jsonl(corpus / "captions.jsonl"):
        clip = by_id[row["id"]]
        assert len(row["caption"]) == len(set(row["caption"])) == 5
        for caption in row["caption"]:
            for obj in clip.objects:
                assert f"{obj.colour} {obj.shape}" in caption, caption
            if clip.count == 2:
                assert "two" in caption or " and " in caption


def test_decoded_object_colour_matches_the_colour_answer(clips, decoded):
    checked = 0
    for clip in clips:
        _, masks = render_clip(clip, return_masks=True)
        middle = clip.middle_frame
        for k, obj in enumerate(clip.objects):
            others = np.delete(masks[middle], k, axis=0).sum(axis=0) if clip.count > 1 else 0.0
            inside = (masks[middle, k] >= 0.999) & (np.asarray(others) == 0)
            # one pixel in from the edge: chroma subsampling blurs the border
            inside &= np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
            assert inside.sum() >= 4, f"{clip.id}: object {k} too small to check"
            mean_rgb = decoded[clip.id][middle][inside].astype(np.float32).mean(axis=0)
            assert _nearest_colour(mean_rgb) == obj.colour, f"{clip.id}: {obj.colour} looks {mean_rgb}"
            checked += 1
    assert checked >= NUM_CLIPS


def test_decoded_motion_matches_the_motion_answer(clips, decoded):
    seen = set()
    for clip in clips:
        pixels = _object_pixels(clip, decoded[clip.id])
        first, last = pixels[0], pixels[-1]
        assert first.sum() > 0 and last.sum() > 0, clip.id
        ys, xs = np.nonzero(first)
        start = np.array([xs.mean(), ys.mean()])
        ys, xs = np.nonzero(last)
        shift = np.array([xs.mean(), ys.mean()]) - start
        area_ratio = last.sum() / first.sum()
        motion = clip.motion
        seen.add(motion)
        if motion in ("left", "right", "up", "down"):
            axis = 0 if motion in ("left", "right") else 1
            sign = -1 if motion in ("left", "up") else 1
            travel = clip.objects[0].speed * (clip.num_frames - 1)
            assert sign * shift[axis] > 0.5 * travel, f"{clip.id} {motion}: centroid shift {shift}, travel {travel:.1f}"
            assert abs(shift[1 - axis]) < 3.0, f"{clip.id} {motion}: sideways shift {shift}"
        elif motion == "growing":
            assert area_ratio > 2.0 and np.abs(shift).max() < 3.0, (clip.id, area_ratio, shift)
        elif motion == "shrinking":
            assert area_ratio < 0.5 and np.abs(shift).max() < 3.0, (clip.id, area_ratio, shift)
        elif motion == "rotating":
            assert 0.75 < area_ratio < 1.33 and np.abs(shift).max() < 2.0, (clip.id, area_ratio, shift)
            changed = max(1 - (pixels[0] & frame).sum() / (pixels[0] | frame).sum() for frame in pixels[1:])
            assert changed > 0.1, f"{clip.id}: a rotating object that does not change ({changed:.2f})"
            assert all(o.shape != "circle" for o in clip.objects)
        else:
            assert np.abs(decoded[clip.id][-1].astype(np.float32) - decoded[clip.id][0]).mean() < 1.0, clip.id
            assert (first ^ last).sum() <= 2, clip.id
    assert seen == set(MOTIONS), f"the test corpus lacks motions {set(MOTIONS) - seen}"


def test_two_object_clips_are_unambiguous_and_never_touch(clips):
    pairs = [clip for clip in clips if clip.count == 2]
    assert len(pairs) >= 5
    for clip in pairs:
        a, b = clip.objects
        assert a.shape != b.shape and a.colour != b.colour
        _, masks = render_clip(clip, return_masks=True)
        assert (masks[:, 0] * masks[:, 1]).max() == 0.0, f"{clip.id}: objects overlap"


# --------------------------------------------------------------------------------------------- tokens


@pytest.mark.quick
def test_every_answer_is_one_smollm2_token(corpus, smollm2_tokenizer):
    from vlm.prompts import answer_continuation, text_ids

    words = {word for vocabulary in ANSWER_VOCABULARY.values() for word in vocabulary}
    assert len(ANSWER_VOCABULARY["colour"]) >= 6 and len(ANSWER_VOCABULARY["shape"]) >= 4
    assert set(ANSWER_VOCABULARY["motion"]) == {
        "left",
        "right",
        "up",
        "down",
        "growing",
        "shrinking",
        "rotating",
        "still",
    }
    for word in words | {row["answer"] for row in _jsonl(corpus / "qa.jsonl")}:
        ids = text_ids(smollm2_tokenizer, answer_continuation(word))
        assert len(ids) == 1, f"{word!r} is {len(ids)} tokens after a space: {ids}"
        assert word in words
    answer_ids = [text_ids(smollm2_tokenizer, answer_continuation(word))[0] for word in words]
    assert len(set(answer_ids)) == len(words)  # no two answers share a token


# --------------------------------------------------------------------------------------------- splits


def test_splits_are_disjoint_and_compositional_pairs_held_out(corpus, clips):
    ids = defaultdict(set)
    for clip in clips:
        ids[clip.split].add(clip.id)
    assert sum(len(v) for v in ids.values()) == len({clip.id for clip in clips}) == NUM_CLIPS
    assert {split: len(ids[split]) for split in SPLITS} == split_counts(NUM_CLIPS, ShapesConfig())
    for split in SPLITS:
        manifest_ids = {row["id"] for row in _jsonl(corpus / split / "qa.jsonl")}
        assert manifest_ids == ids[split]
        assert {p.stem for p in (corpus / "videos" / split).glob("*.mp4")} == ids[split]

    heldout = {tuple(pair) for pair in json.loads((corpus / "corpus.json").read_text())["heldout_pairs"]}
    assert heldout == set(heldout_pairs(ShapesConfig(), SEED)) and len(heldout) == 6
    seen_in_training = set()
    for clip in clips:
        pairs = {(o.colour, o.shape) for o in clip.objects}
        if clip.split == "test_compositional":
            assert pairs & heldout, f"{clip.id} has no held-out colour-shape pair"
        else:
            assert not pairs & heldout, f"{clip.id} ({clip.split}) shows a held-out pair {pairs & heldout}"
            if clip.split == "train":
                seen_in_training |= pairs
    config = ShapesConfig()
    assert {c for c, _ in seen_in_training} == set(config.colours)
    assert {s for _, s in seen_in_training} == set(config.shapes)


def test_heldout_pairs_leave_every_colour_and_shape_in_training():
    config = ShapesConfig()
    assert len({tuple(heldout_pairs(config, seed)) for seed in range(5)}) == 5  # seeded
    for seed in range(5):
        heldout = heldout_pairs(config, seed)
        assert heldout == heldout_pairs(config, seed)
        assert len({c for c, _ in heldout}) == len(heldout)  # distinct colours
        assert len({s for _, s in heldout}) == len(heldout)  # six pairs over six shapes
        splits = assign_splits(800, config, seed)
        training = set()
        for index, split in enumerate(splits):
            if split == "train":
                training |= {
                    (o.colour, o.shape) for o in sample_clip_attributes(index, split, config, seed, heldout).objects
                }
        assert not training & set(heldout)
        assert {c for c, _ in training} == set(config.colours) and {s for _, s in training} == set(config.shapes)


# --------------------------------------------------------------------------------------------- single-frame cues


def test_middle_frame_distribution_does_not_depend_on_the_motion():
    """Middle-frame centre, radius and angle: same range and mean for every motion (so a single frame
    cannot tell the motion), and every object stays inside the frame at every frame."""
    config = ShapesConfig()
    heldout = heldout_pairs(config, 0)
    by_motion = defaultdict(list)
    lower, upper = config.centre_range()
    margin = config.edge_margin * config.frame_size
    for index in range(4000):
        clip = sample_clip_attributes(index, "train", config, 0, heldout)
        for obj in clip.objects:
            by_motion[clip.motion].append([*obj.position, obj.radius, obj.angle % 360, clip.count])
            for t in (0, clip.num_frames - 1):
                state = object_state(obj, t, clip.middle_frame)
                assert margin - 1e-6 <= state.x <= config.frame_size - margin + 1e-6, (clip.id, t, state)
                assert margin - 1e-6 <= state.y <= config.frame_size - margin + 1e-6, (clip.id, t, state)
    assert set(by_motion) == set(MOTIONS)
    every = np.array([row for rows in by_motion.values() for row in rows])
    spread = every.std(axis=0)
    for motion, rows in by_motion.items():
        rows = np.array(rows)
        assert rows[:, :2].min() >= lower and rows[:, :2].max() <= upper
        standard_error = spread / math.sqrt(len(rows))
        gap = np.abs(rows.mean(axis=0) - every.mean(axis=0)) / standard_error
        assert (gap < 4.5).all(), f"{motion}: middle-frame statistics differ (x, y, radius, angle, count): {gap}"
        assert np.abs(np.quantile(rows[:, 2], [0.05, 0.95]) - np.quantile(every[:, 2], [0.05, 0.95])).max() < 1.0


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="shapes"):
        ShapesConfig(shapes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="frame_size"):
        ShapesConfig(frame_size=63)
    with pytest.raises(ValueError, match="preset"):
        ShapesConfig(preset="quick")
    with pytest.raises(ValueError, match="no room"):
        ShapesConfig(travel=(0.9, 1.0))
    with pytest.raises(ValueError, match="num_clips"):
        make_shapes_corpus("/nonexistent/never", 0)


# --------------------------------------------------------------------------------------------- CLI


@pytest.mark.quick
def test_cli_make_shapes(tmp_path, capsys):
    from vlm.cli.main import main

    out = tmp_path / "cli"
    assert (
        main(["make-shapes", str(out), "--num", "6", "--seed", "3", "--frames", "8", "--size", "48", "--no-progress"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 6 and sum(summary["splits"].values()) == 6
    clips = read_attributes(out)
    assert len(clips) == 6 and clips[0].num_frames == 8 and clips[0].frame_size == 48
    assert load_clip(out / clips[0].video, num_frames=8, size=None).shape == (8, 48, 48, 3)
    assert main(["make-shapes", str(out), "--num", "6", "--seed", "4", "--no-progress"]) == 2
    assert "another corpus" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- hard negatives


def _motions_named(text: str) -> set[str]:
    """Motions one of whose phrasings (any rotation direction) occurs in ``text``."""
    from vlm.shapes.language import _PROGRESSIVE, _THIRD_PERSON

    named = set()
    for table in (_PROGRESSIVE, _THIRD_PERSON):
        for motion, options in table.items():
            for option in options:
                for rotation in ("clockwise", "counterclockwise"):
                    if " ".join(option.format(rotation=rotation).split()) in text:
                        named.add(motion)
    return named


def test_hard_negative_captions_change_one_attribute_and_describe_no_clip_phrasing(corpus, clips):
    from vlm.shapes import SHAPES, hard_negative_captions

    by_id = {clip.id: clip for clip in clips}
    heldout = {tuple(pair) for pair in json.loads((corpus / "corpus.json").read_text())["heldout_pairs"]}
    opposite = {
        "left": "right",
        "right": "left",
        "up": "down",
        "down": "up",
        "growing": "shrinking",
        "shrinking": "growing",
    }
    for number, row in enumerate(_jsonl(corpus / "captions.jsonl")):
        clip = by_id[row["id"]]
        for caption in row["caption"]:
            shape_negative, opposite_negative, other_negative = negatives = hard_negative_captions(
                clip, caption, np.random.default_rng([SEED, number]), heldout
            )
            assert len({caption, *negatives}) == 4 and not set(negatives) & set(row["caption"])
            # 1: one object renamed to a shape no object has, never a held-out pair; the rest unchanged
            kept = [o for o in clip.objects if f"{o.colour} {o.shape}" in shape_negative]
            assert len(kept) == clip.count - 1
            (changed,) = [o for o in clip.objects if o not in kept]
            swapped = [s for s in SHAPES if f"{changed.colour} {s}" in shape_negative and s != changed.shape]
            assert len(swapped) == 1 and swapped[0] not in {o.shape for o in clip.objects}
            assert (changed.colour, swapped[0]) not in heldout
            assert shape_negative == caption.replace(
                f"{changed.colour} {changed.shape}", f"{changed.colour} {swapped[0]}"
            )
            # 2 and 3: the objects kept, the motion replaced (by its opposite where it has one)
            for negative in (opposite_negative, other_negative):
                assert all(f"{o.colour} {o.shape}" in negative for o in clip.objects)
                assert clip.motion not in _motions_named(negative)
            assert _motions_named(caption) >= {clip.motion}
            if clip.motion in opposite:
                assert opposite[clip.motion] in _motions_named(opposite_negative)
            assert _motions_named(other_negative) - {clip.motion, opposite.get(clip.motion)}
    other_clip = next(c for c in clips if c.objects[0].shape != clips[0].objects[0].shape)
    with pytest.raises(ValueError, match="does not name"):
        hard_negative_captions(other_clip, _jsonl(corpus / "captions.jsonl")[0]["caption"][0], np.random.default_rng(0))


def test_first_index_continues_the_stream_with_the_same_heldout_pairs(corpus, clips, tmp_path):
    config = ShapesConfig(compositional_fraction=0.0, val_fraction=0.0, test_fraction=0.0)
    extra = make_shapes_corpus(
        tmp_path / "pretrain", 6, seed=SEED, config=config, progress=False, first_index=NUM_CLIPS
    )
    described = json.loads((extra / "corpus.json").read_text())
    assert described["first_index"] == NUM_CLIPS and "first_index" not in json.loads(
        (corpus / "corpus.json").read_text()
    )
    assert described["heldout_pairs"] == json.loads((corpus / "corpus.json").read_text())["heldout_pairs"]
    more = read_attributes(extra)
    assert [c.id for c in more] == [f"clip_{NUM_CLIPS + i:06d}" for i in range(6)] and {c.split for c in more} == {
        "train"
    }
    heldout = {tuple(p) for p in described["heldout_pairs"]}
    assert all((o.colour, o.shape) not in heldout for c in more for o in c.objects)
    assert not {c.background_seed for c in more} & {c.background_seed for c in clips}
    assert more[2] == sample_clip_attributes(NUM_CLIPS + 2, "train", config, SEED, sorted(heldout))
    with pytest.raises(ValueError, match="first_index"):
        make_shapes_corpus(tmp_path / "bad", 2, seed=SEED, first_index=-1, progress=False)


def test_conversations_are_natural_multi_turn_and_agree_with_attributes(corpus, clips):
    from vlm.convert.conversations import read_conversation
    from vlm.shapes.chat_eval import named_answers

    by_id = {clip.id: clip for clip in clips}
    rows = _jsonl(corpus / "conversations.jsonl")
    assert [row["id"] for row in rows] == [clip.id for clip in clips]
    for split in SPLITS:  # per split, with paths relative to the split folder
        split_rows = _jsonl(corpus / split / "conversations.jsonl")
        assert [row["id"] for row in split_rows] == [row["id"] for row in rows if row["split"] == split]
        assert all((corpus / split / row["video"]).is_file() for row in split_rows)
    kinds = Counter()
    for row in rows:
        clip = by_id[row["id"]]
        turns = row["conversations"]
        assert turns[0]["value"].startswith("<video>\n") and not any("<video>" in t["value"] for t in turns[1:])
        messages = read_conversation(turns)  # a valid conversation for training
        assert 3 <= len(messages) // 2 <= 5
        for question, reply in zip(messages[::2], messages[1::2]):
            q, r = question["content"], reply["content"]
            assert r[0].isupper() and r.endswith("."), r  # one sentence
            if q.startswith(("What colour", "What color", "Which colour", "Which color")) and "it" not in q.split():
                kinds["colour"] += 1
                if clip.count == 1:
                    assert named_answers(r, "colour") == {clip.objects[0].colour}, (q, r)
                else:
                    shape = next(o for o in clip.objects if o.shape in q)
                    assert r == f"The {shape.shape} is {shape.colour}."
            elif q.startswith("How many"):
                kinds["count"] += 1
                assert named_answers(r, "count") == {("one", "two")[clip.count - 1]}
                assert all(f"{o.colour} {o.shape}" in r for o in clip.objects) or clip.count == 1
            elif q.startswith(
                ("How is the", "How are the", "What is the object doing", "What are the objects", "What does the shape")
            ):
                kinds["motion"] += 1
                assert named_answers(r, "motion") == {clip.motion}, (q, r)
            elif q.startswith("Is the"):
                kinds["yes/no"] += 1
                asked = named_answers(q, "colour")
                obj = next(o for o in clip.objects if clip.count == 1 or o.shape in q)
                assert r.startswith("Yes" if asked == {obj.colour} else "No") and r.endswith(f"{obj.colour}.")
            elif r.startswith("I cannot tell"):
                kinds["cannot tell"] += 1
            elif q.split()[0] in ("And", "What", "Which", "How") and " it" in f" {q}" and r.startswith("It is"):
                kinds["follow-up"] += 1  # refers back to the object of the previous exchange
    assert all(kinds[k] > 0 for k in ("colour", "count", "motion", "yes/no", "cannot tell", "follow-up")), kinds
