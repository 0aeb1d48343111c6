"""Long videos (vlm.long_video): windows read once and kept in the window cache (reused, invalidated when the
file or settings change, bounded), timelines merged and written as JSON / SRT / WebVTT, moments found by
text against the ground truth of generated long shapes videos, questions routed to the windows they name,
and the `timeline` / `find` / `chat` / `ask` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.video.decode import VideoDecodeError
from encoder.video.windows import video_window_spans
from tests.helpers.tiny_glue import build_tiny_glue
from tests.helpers.video_factory import corrupted_copy
from vlm.cli.main import main
from vlm.inference.assistant import VideoAssistant
from vlm.long_video.cache import WindowCache, WindowCacheError, WindowSettings
from vlm.long_video.moments import find_moments, join_spans
from vlm.long_video.questions import LongVideoQA, named_time, query_phrasings, without_time
from vlm.long_video.reading import TEXT_WINDOW_FRACTION, read_long_video
from vlm.long_video.timeline import TimelineSegment, clock, format_timeline, merge_windows
from vlm.shapes import (
    ShapesConfig,
    make_long_videos,
    make_shapes_corpus,
    read_long_video_truth,
    unique_colour_segments,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW_S = 4.0
REPO = Path(__file__).resolve().parents[3]
DEMO_VIDEO_TEXT = REPO / "vlm" / "demo_model" / "video_text"


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory) -> Path:
    """Two ~40 s videos of moving-shapes clips (8 fps, 64 px) with their ground truth."""
    root = tmp_path_factory.mktemp("long_video")
    corpus = make_shapes_corpus(
        root / "corpus", 40, seed=5, config=ShapesConfig(test_fraction=0.5, compositional_fraction=0.0), progress=False
    )
    make_long_videos(corpus, "test", root / "videos", count=2, duration_s=40.3, seed=2)
    return root / "videos"


@pytest.fixture(scope="module")
def video_text():
    from vlm.retrieval.video_text_model import load_video_text_model

    return load_video_text_model(str(DEMO_VIDEO_TEXT), device="cpu")


@pytest.fixture(scope="module")
def tiny_assistant(smollm2_tokenizer):
    """A tiny random glue (2 frames of 36 px: windows are read once for it and once for the video-text model)."""
    return VideoAssistant(build_tiny_glue(smollm2_tokenizer))


def _count_calls(monkeypatch, obj, name) -> list[int]:
    calls = []
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(len(result))
        return result

    monkeypatch.setattr(obj, name, counted)
    return calls


# ----------------------------------------------------------------------------- the window cache


@pytest.mark.quick
def test_cache_keys_depend_on_file_content_and_every_setting(tmp_path):
    video = tmp_path / "a.bin"
    video.write_bytes(b"one")
    cache = WindowCache(tmp_path / "cache")
    settings = WindowSettings("glue", "weights-a", 8.0, 8, 64)
    key = settings.key(cache.digest(video))
    for other in (
        WindowSettings("video_text", "weights-a", 8.0, 8, 64),
        WindowSettings("glue", "weights-b", 8.0, 8, 64),
        WindowSettings("glue", "weights-a", 4.0, 8, 64),
        WindowSettings("glue", "weights-a", 8.0, 16, 64),
        WindowSettings("glue", "weights-a", 8.0, 8, 288),
    ):
        assert other.key(cache.digest(video)) != key
    video.write_bytes(b"two")  # new content (and mtime): a new digest
    assert settings.key(cache.digest(video)) != key
    with pytest.raises(WindowCacheError):
        WindowCache(tmp_path / "c2", max_bytes=-1)


@pytest.mark.quick
def test_cache_entries_resume_and_the_cache_stays_within_its_bound(tmp_path):
    video = tmp_path / "a.bin"
    video.write_bytes(b"x" * 100)
    spans = [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0)]
    cache = WindowCache(tmp_path / "cache", max_bytes=10**9)
    entry = cache.entry(video, WindowSettings("glue", "m", 4.0, 8, 64), spans)
    entry.append(torch.ones(2, 3, 5))
    again = cache.entry(video, WindowSettings("glue", "m", 4.0, 8, 64), spans)  # an interrupted run's next start
    assert again.num_windows == 2 and not again.complete
    again.append(torch.zeros(1, 3, 5))
    again.finish()
    loaded = cache.entry(video, WindowSettings("glue", "m", 4.0, 8, 64), spans)
    assert loaded.complete and loaded.load().shape == (3, 3, 5) and loaded.load().dtype == torch.float16
    assert cache.entry(video, WindowSettings("glue", "m", 4.0, 8, 64), spans[:2]).num_windows == 0  # other spans
    for index in range(4):  # more entries than fit
        other = cache.entry(video, WindowSettings("glue", f"model-{index}", 4.0, 8, 64), spans)
        other.append(torch.ones(3, 64, 64))
    bounded = WindowCache(tmp_path / "cache", max_bytes=60_000)
    bounded.evict(keep=other.directory)
    assert bounded.size_bytes() <= 60_000 and other.directory.is_dir()


# ----------------------------------------------------------------------------- reading windows


def test_windows_are_read_once_then_come_from_the_cache(long_videos, tiny_assistant, video_text, tmp_path, monkeypatch):
    path = long_videos / "long-000.mp4"
    cache = WindowCache(tmp_path / "cache")
    glue_calls = _count_calls(monkeypatch, tiny_assistant.model, "get_video_features")
    text_calls = _count_calls(monkeypatch, video_text, "embed_clips")
    first = read_long_video(
        path, model=tiny_assistant.model, video_text_model=video_text, window_s=WINDOW_S, cache=cache, batch_size=4
    )
    spans = video_window_spans(path, WINDOW_S)
    text_spans = video_window_spans(path, WINDOW_S * TEXT_WINDOW_FRACTION)  # the video-text model's finer windows
    assert first.num_windows == len(spans) == 10 and sum(glue_calls) == len(spans)
    assert len(first.text_spans) == sum(text_calls) == len(text_spans) == 40
    assert first.glue_features().shape[:2] == (10, tiny_assistant.config.resampler.num_latents)
    assert first.embeddings.shape == (40, video_text.embedding_dim)
    second = read_long_video(
        path, model=tiny_assistant.model, video_text_model=video_text, window_s=WINDOW_S, cache=cache, batch_size=4
    )
    assert sum(glue_calls) == len(spans) and sum(text_calls) == len(text_spans)  # encode once: nothing again
    torch.testing.assert_close(second.glue_features(), first.glue_features())
    torch.testing.assert_close(second.embeddings, first.embeddings)
    # the same windows decoded one by one give the cached embeddings (float16 storage)
    from encoder.video.decode import load_clip

    start, end = text_spans[3]
    direct = video_text.embed_clips(load_clip(path, 8, 64, start, end)[None])[0]
    torch.testing.assert_close(first.embeddings[3], direct, atol=2e-3, rtol=0)
    # another window length, another entry; a changed file, a new entry
    read_long_video(path, video_text_model=video_text, window_s=5.0, cache=cache)
    assert sum(text_calls) == len(text_spans) + 1 + len(video_window_spans(path, 5.0 * TEXT_WINDOW_FRACTION))
    changed = tmp_path / "changed.mp4"
    shutil.copy(long_videos / "long-001.mp4", changed)
    read_long_video(changed, video_text_model=video_text, window_s=WINDOW_S, cache=cache)
    shutil.copy(path, changed)  # same name, other content: not the cached windows of long-001
    redone = read_long_video(changed, video_text_model=video_text, window_s=WINDOW_S, cache=cache)
    torch.testing.assert_close(redone.embeddings, first.embeddings)


def test_a_video_damaged_part_way_keeps_the_windows_before_the_damage(long_videos, video_text, tmp_path, monkeypatch):
    damaged = corrupted_copy(long_videos / "long-001.mp4", tmp_path / "damaged.mp4", at=0.5, num_bytes=4000)
    cache = WindowCache(tmp_path / "cache")
    with pytest.raises(VideoDecodeError):
        read_long_video(damaged, video_text_model=video_text, window_s=WINDOW_S, cache=cache)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    meta = json.loads((entry / "meta.json").read_text())
    kept = sum(chunk["windows"] for chunk in meta["chunks"])
    assert 0 < kept < len(video_window_spans(damaged, WINDOW_S * TEXT_WINDOW_FRACTION)) and not meta["complete"]
    calls = _count_calls(monkeypatch, video_text, "embed_clips")
    with pytest.raises(VideoDecodeError):  # the next run starts after the kept windows
        read_long_video(damaged, video_text_model=video_text, window_s=WINDOW_S, cache=cache)
    assert sum(calls) <= 1


# ----------------------------------------------------------------------------- timelines


@pytest.mark.quick
def test_neighbours_with_the_same_caption_merge_and_formats_are_well_formed():
    spans = [(0, 4), (4, 8), (8, 12), (12, 16.5)]
    captions = ["a red star moving left", "A red star moving left.", "a blue heart", "a red star moving left"]
    segments = merge_windows(spans, captions)
    assert segments == [
        TimelineSegment(0, 8, "a red star moving left"),
        TimelineSegment(8, 12, "a blue heart"),
        TimelineSegment(12, 16.5, "a red star moving left"),
    ]
    assert json.loads(format_timeline(segments, "json"))[2] == {"start": 12, "end": 16.5, "caption": captions[3]}
    srt = format_timeline(segments, "srt").split("\n\n")
    assert srt[2].splitlines() == ["3", "00:00:12,000 --> 00:00:16,500", "a red star moving left"]
    vtt = format_timeline(segments, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:08.000\na red star")
    assert clock(64) == "1:04" and clock(3725.9) == "1:02:05"
    with pytest.raises(ValueError):
        merge_windows(spans, captions[:2])


def test_timeline_captions_every_window_from_the_cache(long_videos, tiny_assistant, tmp_path, monkeypatch):
    from vlm.long_video.timeline import make_timeline, window_captions

    path = long_videos / "long-000.mp4"
    video = read_long_video(path, model=tiny_assistant.model, window_s=WINDOW_S, cache=WindowCache(tmp_path / "c"))
    captions = window_captions(tiny_assistant, video, batch_size=3, max_new_tokens=4)
    direct = tiny_assistant.caption(video_features=video.glue_features([7]), max_new_tokens=4)
    assert len(captions) == video.num_windows and captions[7] == direct[0]
    segments = make_timeline(tiny_assistant, video, batch_size=3, max_new_tokens=4)
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(video.duration)
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))


# ----------------------------------------------------------------------------- moments


@pytest.mark.quick
def test_adjacent_windows_that_match_together_form_one_span():
    scores = np.array([0.1, 0.1, 0.8, 0.75, 0.2, 0.1, 0.6, 0.1, 0.1])
    spans = join_spans(scores, top_k=3)
    assert spans[0][:2] == (2, 3) and spans[1][:2] == (6, 6)  # 0.75 is within half the gap of 0.8 to the median
    assert [peak for _, _, peak in spans] == sorted((peak for _, _, peak in spans), reverse=True)
    taken = [i for first, last, _ in spans for i in range(first, last + 1)]
    assert len(taken) == len(set(taken))  # spans never overlap


def test_find_locates_a_unique_colour_in_generated_long_videos(long_videos, video_text, tmp_path):
    """The demo video-text model on ground-truth timelines: the best span for "a <colour> object", a colour
    that appears in one segment only, overlaps that segment."""
    cache = WindowCache(tmp_path / "cache")
    hits = total = 0
    for truth_file in sorted(long_videos.glob("long-*.json")):
        truth = read_long_video_truth(truth_file)
        video = read_long_video(long_videos / truth.video, video_text_model=video_text, window_s=WINDOW_S, cache=cache)
        for colour, segment in unique_colour_segments(truth).items():
            best = find_moments(video_text, video, f"a {colour} object", top_k=1)[0]
            assert 0 <= best.start < best.end <= video.duration + 1e-6
            hits += best.start < segment.end and segment.start < best.end
            total += 1
    assert total >= 4 and hits / total >= 0.5


# ----------------------------------------------------------------------------- questions


@pytest.mark.quick
def test_times_named_in_questions_are_read_and_taken_out():
    assert named_time("What colour is the object at 1:04?") == 64
    assert named_time("what happens at 1:02:03") == 3723
    assert named_time("and at 75 s?") == 75 and named_time("What colour is it?") is None
    assert without_time("What colour is the object at 1:04?") == "What colour is the object?"
    assert query_phrasings("the red object") == ["a red object", "a red shape", "a red shape moving"]
    assert query_phrasings("the star ") == ["a star"]


def test_questions_go_to_the_windows_they_concern(long_videos, tiny_assistant, video_text, tmp_path, monkeypatch):
    path = long_videos / "long-000.mp4"
    video = read_long_video(
        path,
        model=tiny_assistant.model,
        video_text_model=video_text,
        window_s=WINDOW_S,
        cache=WindowCache(tmp_path / "cache"),
    )
    qa = LongVideoQA(tiny_assistant, video_text, video, max_new_tokens=4)
    at_time = qa.reply([{"role": "user", "content": "What colour is the object at 0:21?"}])
    assert at_time.rule == "time" and at_time.text.startswith("At 0:20-0:22: ") and at_time.spans == [(20.0, 22.0)]
    truth = read_long_video_truth(long_videos / "long-000.json")
    colour = sorted(unique_colour_segments(truth))[0]
    when = qa.reply([{"role": "user", "content": f"When does the {colour} object appear?"}])
    assert when.rule == "when" and when.text.startswith("At ") and when.spans
    assert qa.reply([{"role": "user", "content": "Describe the video."}]).rule == "whole"
    after = qa.reply([{"role": "user", "content": f"What happens after the {colour} object?"}])
    assert after.rule == "after" and after.text.startswith("After the ")
    other = qa.reply([{"role": "user", "content": "Is the shape big?"}])
    assert other.rule == "window" and other.text.startswith("At ")
    late = qa.reply([{"role": "user", "content": "What is there at 9:00?"}])
    assert "after its end" in late.text
    (start, end), ranked = qa.rank("What colour is the object at 0:21?", ["red", "blue"])
    assert (start, end) == (20.0, 22.0) and sorted(r.answer for r in ranked) == ["blue", "red"]


# ----------------------------------------------------------------------------- commands


def test_timeline_and_find_commands(long_videos, glue_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRISM_VLM_CACHE", str(tmp_path / "cache"))
    path = str(long_videos / "long-001.mp4")
    common = ["--window", "4", "--device", "cpu", "--no-progress"]
    assert main(["timeline", path, "--model", str(glue_dir), "--json", "--max-new-tokens", "3", *common]) == 0
    segments = json.loads(capsys.readouterr().out)
    assert segments[0]["start"] == 0 and all({"start", "end", "caption"} == set(s) for s in segments)
    assert main(["timeline", path, "--model", str(glue_dir), "--srt", "--max-new-tokens", "3", *common]) == 0
    assert capsys.readouterr().out.startswith("1\n00:00:00,000 --> ")
    assert (
        main(
            ["find", path, "a red object", "--top", "2", "--json", "--video-text-model", str(DEMO_VIDEO_TEXT), *common]
        )
        == 0
    )
    moments = json.loads(capsys.readouterr().out)
    assert 1 <= len(moments) <= 2 and moments[0]["score"] >= moments[-1]["score"]
    out = tmp_path / "timelines"
    argv = [
        "timeline",
        str(long_videos),
        "--out",
        str(out),
        "--model",
        str(glue_dir),
        "--vtt",
        "--max-new-tokens",
        "3",
        *common,
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 2 and len(list(out.glob("*.vtt"))) == 2
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 2  # resumable
    with pytest.raises(SystemExit):  # absurd flags are usage errors
        main(["timeline", path, "--window", "0.1"])
    assert main(["find", path, "  ", *common]) == 2


def test_chat_and_ask_over_a_long_video_name_the_times(long_videos, glue_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRISM_VLM_CACHE", str(tmp_path / "cache"))
    path = str(long_videos / "long-000.mp4")
    common = [
        "--model",
        str(glue_dir),
        "--window",
        "4",
        "--device",
        "cpu",
        "--no-progress",
        "--video-text-model",
        str(DEMO_VIDEO_TEXT),
        "--max-new-tokens",
        "4",
    ]
    assert main(["chat", path, "--message", "What colour is the object at 0:10?", "--json", *common]) == 0
    turns = json.loads(capsys.readouterr().out)["turns"]
    assert turns[1]["content"].startswith("At 0:09-0:11: ")
    assert main(["ask", path, "What colour is the object at 0:10?", "--candidates", "red,blue", "--json", *common]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert ranked["span"] == {"start": 9.0, "end": 11.0} and len(ranked["candidates"]) == 2


@pytest.mark.quick
def test_the_long_video_scores_read_replies_as_documented():
    from types import SimpleNamespace

    from vlm.long_video.evaluation import (
        colour_reply_is_right,
        first_colour,
        first_named_span,
        iou,
        when_reply_is_right,
    )

    assert iou((0, 4), (2, 6)) == pytest.approx(2 / 6) and iou((0, 1), (2, 3)) == 0
    assert first_named_span("At 1:03-1:05, and also at 2:00-2:08.") == (63, 65)
    assert first_named_span("At 1:02:03-1:02:05.") == (3723, 3725) and first_named_span("no time") is None
    segment = SimpleNamespace(start=60.5, end=66.0)
    assert when_reply_is_right("At 1:01-1:04.", segment) and not when_reply_is_right("At 0:50-0:58.", segment)
    assert first_colour("A red star and a blue heart") == "red" and first_colour("a star") is None
    assert colour_reply_is_right("The object is red.", "red")
    assert not colour_reply_is_right("It is red or blue.", "red")  # names another colour too
