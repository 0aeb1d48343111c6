"""Long videos made of moving-shapes clips (``prism-vlm make-long-shapes``): segments that tile the video
within their bounds and off whole seconds, the colour rule, decoded durations and frames that agree with
the ground truth, resuming, and the command."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from encoder.common.errors import UsageError
from encoder.video.decode import load_clip, open_video, stream_duration, video_stream
from vlm.shapes import (
    PALETTE,
    CorpusFolderError,
    ShapesConfig,
    make_long_videos,
    make_shapes_corpus,
    read_attributes,
    read_long_video_truth,
    read_long_videos,
    render_clip,
    segment_at,
    unique_colour_segments,
)
from vlm.shapes.long_videos import (
    check_long_video_settings,
    choose_clips,
    one_object_segments,
    segment_frames,
    segment_lengths,
)

SPLIT = "test"
DURATION_S = 35.3  # 282 frames at 8 fps: 35.25 s
MIN_S, MAX_S = 2.0, 12.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """40 clips, half of them in the test split (about 20: enough colours for the colour rule)."""
    config = ShapesConfig(test_fraction=0.5, compositional_fraction=0.0)
    return make_shapes_corpus(tmp_path_factory.mktemp("long") / "corpus", 40, seed=3, config=config, progress=False)


@pytest.fixture(scope="module")
def long_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("long") / "videos"
    paths = make_long_videos(corpus, SPLIT, out, count=2, duration_s=DURATION_S, seed=1)
    assert paths == [out / "long-000.mp4", out / "long-001.mp4"]
    return out


@pytest.fixture(scope="module")
def truths(long_dir):
    return read_long_videos(long_dir)


def _dominant_colours(frame: np.ndarray, min_pixels: int = 6) -> Counter:
    """Palette colours (by pixel count) of the pixels within 60 RGB levels of a palette entry: the
    objects' pixels (the background is low-saturation grey, far from every palette colour)."""
    names = list(PALETTE)
    palette = np.asarray([PALETTE[name] for name in names], dtype=np.float32)
    distances = np.linalg.norm(frame.reshape(-1, 1, 3).astype(np.float32) - palette[None], axis=-1)
    nearest, close = distances.argmin(axis=1), distances.min(axis=1) < 60
    counts = Counter(names[i] for i in nearest[close])
    return Counter({name: n for name, n in counts.items() if n >= min_pixels})


# --------------------------------------------------------------------------------------------- files and tiling


@pytest.mark.quick
def test_files_index_and_truth_records(long_dir, truths, corpus):
    assert sorted(p.name for p in long_dir.iterdir()) == [
        "long-000.json",
        "long-000.mp4",
        "long-001.json",
        "long-001.mp4",
        "long_videos.json",
        "long_videos.jsonl",
    ]
    rows = [json.loads(line) for line in (long_dir / "long_videos.jsonl").read_text().splitlines()]
    assert [row["video"] for row in rows] == ["long-000.mp4", "long-001.mp4"]
    assert [row["truth"] for row in rows] == ["long-000.json", "long-001.json"]
    settings = json.loads((long_dir / "long_videos.json").read_text())
    assert settings["split"] == SPLIT and settings["fps"] == 8 and settings["corpus"]["seed"] == 3

    clips = {clip.id: clip for clip in read_attributes(corpus, SPLIT)}
    captions = {
        row["id"]: row["caption"] for row in map(json.loads, (corpus / "captions.jsonl").read_text().splitlines())
    }
    for row, truth in zip(rows, truths):
        raw = json.loads(truth.path.read_text())
        assert raw["video"] == row["video"] and truth.video == long_dir / row["video"]
        assert truth.fps == 8 and truth.frame_size == 64 and truth.split == SPLIT
        assert truth.num_frames == round(DURATION_S * 8) and truth.duration == truth.num_frames / 8
        assert row["num_segments"] == len(truth.segments) and row["duration"] == truth.duration
        assert row["unique_colours"] == list(unique_colour_segments(truth))
        for segment, record in zip(truth.segments, raw["segments"]):
            clip = clips[segment.clip]  # a clip of the split, recorded as in the corpus
            assert record["attributes"] == json.loads(json.dumps(clip.to_dict())) and segment.attributes == clip
            assert segment.caption == captions[clip.id][0] and segment.captions == captions[clip.id]
            assert record["colours"] == [o.colour for o in clip.objects] and record["count"] == clip.count
            assert record["motion"] == clip.motion and segment.clip_video == clip.video
            assert (corpus / segment.clip_video).is_file()


@pytest.mark.quick
def test_segments_tile_the_video_within_bounds_and_off_whole_seconds(truths):
    boundaries = []
    for truth in truths:
        segments = truth.segments
        assert len(segments) >= 4  # unique_colours + 2
        assert segments[0].start == 0.0 and segments[-1].end == truth.duration
        for before, after in zip(segments, segments[1:]):
            assert before.end == after.start and before.end_frame == after.start_frame  # no gap, no overlap
            boundaries.append(before.end)
        for segment in segments:
            assert segment.start == segment.start_frame / truth.fps and segment.end == segment.end_frame / truth.fps
            assert MIN_S <= segment.duration <= MAX_S, segment
            frames = segment.end_frame - segment.start_frame
            assert segment.speed_factor == pytest.approx((segment.attributes.num_frames - 1) / (frames - 1))
        assert len({s.clip for s in segments}) == len(segments)  # no clip twice in a small video
    assert boundaries and not any(t % 1.0 == 0.0 for t in boundaries)  # so none on a multiple of 4, 8 or 10 s
    lengths = [s.duration for truth in truths for s in truth.segments]
    assert len(set(lengths)) > len(lengths) // 2  # lengths vary


@pytest.mark.quick
def test_colour_rule_unique_and_repeated_colours(truths):
    for truth in truths:
        unique = unique_colour_segments(truth)
        assert len(unique) >= 2
        per_segment = Counter(colour for segment in truth.segments for colour in set(segment.colours))
        assert max(per_segment.values()) >= 2  # some colour repeats
        for colour, segment in unique.items():
            assert segment.colours == (colour,) and segment.count == 1
            assert [s.index for s in truth.segments if colour in s.colours] == [segment.index]
        assert {s.index for s in unique.values()} <= {s.index for s in one_object_segments(truth)}


@pytest.mark.quick
def test_segment_at(truths):
    truth = truths[0]
    for segment in truth.segments:
        assert segment_at(truth, segment.start) is segment
        assert segment_at(truth, (segment.start + segment.end) / 2) is segment
        assert segment_at(truth, math.nextafter(segment.end, 0.0)) is segment
    assert segment_at(truth, -0.01) is None and segment_at(truth, truth.duration) is None
    assert segment_at(truth, truth.duration - 1e-6) is truth.segments[-1]


# --------------------------------------------------------------------------------------------- the decoded videos


@pytest.mark.quick
def test_decoded_duration_and_frames_match_the_truth(truths):
    import av

    for truth in truths:
        with open_video(truth.video) as container:
            stream = video_stream(container, truth.video)
            assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (64, 64)
            assert abs(stream_duration(container, stream) - truth.duration) <= 1 / truth.fps
            assert sum(1 for _ in container.decode(stream)) == truth.num_frames
        with av.open(str(truth.video)) as container:
            keyframes = [p.pts for p in container.demux(container.streams.video[0]) if p.is_keyframe]
        assert len(keyframes) >= truth.duration / 2 - 1  # seekable windows: a keyframe every 2 s


@pytest.mark.quick
def test_frames_inside_a_segment_show_its_clip(truths):
    checked = 0
    for truth in truths:
        for segment in truth.segments:
            decoded = load_clip(truth.video, 1, None, segment.start, segment.end)[0]  # the middle of the segment
            decoded = np.rint(decoded * 255).astype(np.uint8)
            colours = _dominant_colours(decoded)
            assert colours and set(colours) <= set(segment.colours), (segment.clip, segment.colours, colours)
            if segment.count == 1:
                assert colours.most_common(1)[0][0] == segment.colours[0]
            # the frame the renderer draws there (within H.264's error, as tests/vlm/shapes/test_shapes.py allows)
            shown = math.floor((segment.start + segment.end) / 2 * truth.fps) - segment.start_frame
            frames = segment.end_frame - segment.start_frame
            rendered = next(islice(segment_frames(segment.attributes, frames), shown, None))
            assert np.abs(decoded.astype(np.float32) - rendered).mean() < 4.0, segment.clip
            checked += 1
    assert checked == sum(len(truth.segments) for truth in truths)


@pytest.mark.quick
def test_segment_frames_spread_the_clip_over_the_segment(corpus):
    clips = read_attributes(corpus, SPLIT)
    clip = next(c for c in clips if c.motion in ("left", "right", "up", "down"))
    frames = render_clip(clip)
    assert np.array_equal(np.stack(list(segment_frames(clip, clip.num_frames))), frames)  # as long as the clip
    stretched = list(segment_frames(clip.to_dict(), 5 * clip.num_frames))
    assert np.array_equal(stretched[0], frames[0]) and np.array_equal(stretched[-1], frames[-1])
    assert np.array_equal(next(segment_frames(clip, 1)), frames[clip.middle_frame])
    # the object keeps moving the clip's way the whole time: its colour's centroid moves monotonically
    colour = np.asarray(PALETTE[clip.objects[0].colour], dtype=np.float32)
    axis = 1 if clip.motion in ("left", "right") else 0
    sign = 1 if clip.motion in ("right", "down") else -1
    centroids = []
    for frame in stretched[:: clip.num_frames // 2]:
        mask = np.linalg.norm(frame.astype(np.float32) - colour, axis=-1) < 40
        centroids.append(np.nonzero(mask)[axis].mean())
    assert all(sign * (b - a) > 0 for a, b in zip(centroids, centroids[1:])), centroids


# --------------------------------------------------------------------------------------------- rules and settings


@pytest.mark.quick
def test_segment_lengths_follow_the_rules():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        fps = (1, 8, 25)[seed % 3]
        low, high = ((2, 12), (4, 6), (3, 3.5))[seed % 3]
        total = int(rng.integers(4 * round(low * fps), 40 * fps))
        min_frames, max_frames = math.ceil(low * fps), math.floor(high * fps)
        try:
            check_long_video_settings(total / fps, low, high, fps, 2)
        except UsageError:
            continue
        lengths = segment_lengths(total, min_frames, max_frames, 4, fps, rng)
        assert sum(lengths) == total and len(lengths) >= 4
        assert all(min_frames <= n <= max_frames for n in lengths), lengths
        if fps > 1 and (low, high) == (2, 12):
            assert not any(b % fps == 0 for b in np.cumsum(lengths)[:-1]), lengths


@pytest.mark.quick
def test_settings_that_do_not_fit_are_refused(corpus, tmp_path):
    with pytest.raises(UsageError, match="min_segment_s"):
        check_long_video_settings(60, 5, 3, 8, 2)
    with pytest.raises(UsageError, match="cannot be cut into 4"):
        check_long_video_settings(7, 2, 12, 8, 2)
    with pytest.raises(UsageError, match="unique_colours must be <= 8"):
        check_long_video_settings(600, 2, 12, 8, 9)
    with pytest.raises(UsageError, match="unknown split"):
        make_long_videos(corpus, "tests", tmp_path / "never", count=1, duration_s=30)
    red = [clip for clip in read_attributes(corpus) if clip.objects[0].colour == "red"]
    with pytest.raises(UsageError, match="one-object clips of 1 colours"):
        choose_clips(5, red, 2, np.random.default_rng(0))
    assert not (tmp_path / "never").exists()


def test_rerun_skips_finished_videos_and_refuses_other_settings(corpus, tmp_path):
    out = tmp_path / "resume"
    written = []
    make_long_videos(corpus, SPLIT, out, count=1, duration_s=12.5, on_video=written.append)
    assert written == [out / "long-000.mp4"]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("long-000.*")}

    written.clear()
    make_long_videos(corpus, SPLIT, out, count=2, duration_s=12.5, on_video=written.append)
    assert written == [out / "long-001.mp4"]  # the finished video is skipped
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("long-000.*")} == before
    assert [t.video.name for t in read_long_videos(out)] == ["long-000.mp4", "long-001.mp4"]

    (out / "long-000.json").unlink()  # unfinished: written again, to the same bytes
    written.clear()
    make_long_videos(corpus, SPLIT, out, count=2, duration_s=12.5, on_video=written.append)
    assert written == [out / "long-000.mp4"]
    assert {p.name: p.read_bytes() for p in out.glob("long-000.*")} == {k: v[0] for k, v in before.items()}

    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CorpusFolderError, match="other settings"):
        make_long_videos(corpus, SPLIT, out, count=2, duration_s=12.5, seed=5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CorpusFolderError, match="not an empty folder"):
        make_long_videos(corpus, SPLIT, tmp_path / "other", count=1, duration_s=12.5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


@pytest.mark.quick
def test_reader_refuses_a_broken_timeline(long_dir, tmp_path):
    raw = json.loads((long_dir / "long-000.json").read_text())
    raw["segments"][1]["start_frame"] += 1
    (tmp_path / "broken.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="does not follow"):
        read_long_video_truth(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"video": "x.mp4"}')
    with pytest.raises(ValueError, match="not a long-video ground truth"):
        read_long_video_truth(tmp_path / "other.json")


# --------------------------------------------------------------------------------------------- CLI


@pytest.mark.quick
def test_cli_make_long_shapes(corpus, tmp_path, capsys):
    from vlm.cli.main import main

    out = tmp_path / "cli"
    arguments = ["make-long-shapes", str(corpus), "--out", str(out), "--count", "2", "--duration", "14.2"]
    assert main([*arguments, "--min-segment", "2.5", "--max-segment", "5", "--seed", "4", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == 2 and summary["written"] == 2 and summary["skipped"] == 0
    assert summary["split"] == "test" and summary["duration"] == 14.25
    truths = read_long_videos(out)
    assert summary["segments"] == sum(len(t.segments) for t in truths)
    assert all(2.5 <= s.duration <= 5 for t in truths for s in t.segments)

    assert main([*arguments, "--min-segment", "2.5", "--max-segment", "5", "--seed", "4", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2

    bad = tmp_path / "bad"
    assert main(["make-long-shapes", str(corpus), "--out", str(bad), "--min-segment", "6", "--max-segment", "3"]) == 2
    assert "min_segment_s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-long-shapes", str(corpus), "--out", str(bad), "--duration", "-3"])
    assert "--duration" in capsys.readouterr().err and not bad.exists()
