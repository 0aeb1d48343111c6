"""The feature cache's index and errors files as a resume finds them: clip file names that are not
UTF-8, shard names that point outside the cache, and malformed lines (reported with FILE:LINE, moved
aside on resume, their clips encoded again, every valid line kept)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from encoder.common.jsonl import read_jsonl_tolerant
from encoder.video.clips import list_videos
from encoder.videoprism.features import CacheMeta, FeatureCache, write_clip_vectors
from tests.helpers.tiny_glue import write_clip

FRAMES, SIZE = 2, 36
META = CacheMeta("mean-colour", "0" * 40, FRAMES, SIZE, "fp32", "fp32")
LOGGER = "encoder.videoprism.features"


def mean_colour(clips) -> torch.Tensor:
    """[B, T, S, S, 3] -> [B, 3]: a cheap stand-in for an encoder."""
    return torch.as_tensor(clips).float().mean(dim=(1, 2, 3))


def write_cache(videos: list[str], cache_dir: Path, shard_size: int = 1) -> dict[str, int]:
    return write_clip_vectors(
        mean_colour, META, videos, cache_dir, batch_size=2, shard_size=shard_size, num_workers=0, progress=False
    )


@pytest.fixture
def videos(tmp_path) -> list[str]:
    """Three small clips, in order a, b, c."""
    folder = tmp_path / "videos"
    folder.mkdir()
    return [str(write_clip(folder / f"{name}.mp4", seed=seed)) for seed, name in enumerate("abc")]


def index_lines(cache_dir: Path) -> list[str]:
    return (cache_dir / "index.jsonl").read_text(encoding="ascii").splitlines()


@pytest.mark.quick
def test_a_file_name_that_is_not_utf8_is_cached_and_resumed(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_clip(folder / "a.mp4", seed=0)
    with open(os.path.join(os.fsencode(str(folder)), b"clip_\xff.mp4"), "wb") as handle:
        handle.write((folder / "a.mp4").read_bytes())
    with open(os.path.join(os.fsencode(str(folder)), b"broken_\xfe.mp4"), "wb") as handle:
        handle.write(b"not a video" * 20)
    listed = list_videos(folder)
    odd = os.fsdecode(os.path.join(os.fsencode(str(folder)), b"clip_\xff.mp4"))
    assert odd in listed
    cache_dir = tmp_path / "cache"
    assert write_cache(listed, cache_dir) == {"encoded": 2, "skipped": 0, "errors": 1}
    cache = FeatureCache(cache_dir)
    assert odd in cache and any("broken_" in video for video in cache.errors)
    torch.testing.assert_close(cache.get(odd), cache.get(str(folder / "a.mp4")))
    assert write_cache(listed, cache_dir) == {"encoded": 0, "skipped": 3, "errors": 0}  # the resume knows them


@pytest.mark.quick
@pytest.mark.parametrize("shard", ["../victim.txt", "ABSOLUTE", "shard-00000.safetensors/../../victim.txt", "x.bin"])
def test_a_shard_outside_the_cache_is_never_opened_or_renamed(tmp_path, videos, caplog, shard):
    cache_dir = tmp_path / "cache"
    write_cache(videos[:1], cache_dir)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    shard = str(victim) if shard == "ABSOLUTE" else shard
    with open(cache_dir / "index.jsonl", "a") as index:
        index.write(json.dumps({"video": videos[1], "shard": shard, "row": 0}) + "\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert videos[1] not in FeatureCache(cache_dir)  # read: the line is ignored
        assert write_cache(videos, cache_dir) == {"encoded": 2, "skipped": 1, "errors": 0}
    assert victim.read_text() == "keep me" and [p.name for p in tmp_path.glob("victim*")] == ["victim.txt"]
    assert f"{cache_dir / 'index.jsonl'}:2: 'shard' must be a name like shard-00000.safetensors" in caplog.text
    assert json.loads((cache_dir / "index.jsonl.malformed").read_text())["shard"] == shard
    assert sorted(FeatureCache(cache_dir).videos) == sorted(videos)


@pytest.mark.quick
def test_malformed_index_lines_are_reported_and_their_clips_encoded_again(tmp_path, videos, caplog):
    cache_dir = tmp_path / "cache"
    write_cache(videos, cache_dir)
    reference = {video: FeatureCache(cache_dir).get(video).clone() for video in videos}
    a, b, c = (json.loads(line) for line in index_lines(cache_dir))
    bad_lines = [
        json.dumps(b | {"row": "zero"}),
        json.dumps({key: value for key, value in c.items() if key != "shard"}),
        "not json at all",
        "[1, 2]",
        '"a string"',
        json.dumps(a | {"row": 7}),  # past the end of a's shard, which stays valid
    ]
    (cache_dir / "index.jsonl").write_text(json.dumps(a) + "\n" + "\n".join(bad_lines) + "\n")
    index = cache_dir / "index.jsonl"

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cache = FeatureCache(cache_dir)  # reading reports and skips, never raises
        assert cache.videos == [videos[0]]
        assert f"{index}:2: 'row' must be a non-negative integer, got 'zero'" in caplog.text
        assert f"{index}:3: 'shard' must be a name like shard-00000.safetensors, got None" in caplog.text
        assert f"{index}:4: not valid JSON" in caplog.text
        assert f"{index}:5: not a JSON object" in caplog.text and f"{index}:6: not a JSON object" in caplog.text
        caplog.clear()
        assert write_cache(videos, cache_dir) == {"encoded": 2, "skipped": 1, "errors": 0}
        assert f"{index}:2: row 7 of shard-00000.safetensors, which holds 1 rows" in caplog.text

    assert not list(cache_dir.glob("*.corrupt"))  # a's shard was kept
    assert len((cache_dir / "index.jsonl.malformed").read_text().splitlines()) == 5
    cache = FeatureCache(cache_dir)
    assert sorted(cache.videos) == sorted(videos) and len(index_lines(cache_dir)) == 3
    for video, tokens in reference.items():
        torch.testing.assert_close(cache.get(video), tokens)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert write_cache(videos, cache_dir) == {"encoded": 0, "skipped": 3, "errors": 0}
    assert not caplog.text  # the index is clean after the resume


@pytest.mark.quick
def test_malformed_error_lines_are_reported_and_retried(tmp_path, videos, caplog):
    cache_dir = tmp_path / "cache"
    write_cache(videos[:1], cache_dir)
    (cache_dir / "errors.jsonl").write_text(
        json.dumps({"video": videos[1]}) + "\n" + json.dumps({"video": videos[2], "error": "unreadable"}) + "\n"
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert write_cache(videos, cache_dir) == {"encoded": 1, "skipped": 2, "errors": 0}
    assert f"{cache_dir / 'errors.jsonl'}:1: 'error' must be a string, got None" in caplog.text
    assert [row["video"] for row in read_jsonl_tolerant(cache_dir / "errors.jsonl")] == [videos[2]]
    assert FeatureCache(cache_dir).videos == videos[:2]
