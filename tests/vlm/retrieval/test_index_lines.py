"""A video index directory as ``VideoIndex.load`` and a resumed ``build_index`` find it: clip file
names that are not UTF-8, shard names pointing outside the index, malformed index lines, and index
lines pointing past the end of a shard."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from tests.helpers.fixture_files import REFERENCE_DIR, TEST_SPM_MODEL
from tests.helpers.video_factory import write_video
from vlm.retrieval.index import VideoIndex, VideoIndexError, build_index
from vlm.retrieval.video_text_model import load_video_text_model

LVT_NPZ = REFERENCE_DIR / "lvt_tiny_params.npz"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lvt_model():
    return load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL, text_length=16)


@pytest.fixture
def videos(tmp_path) -> list[str]:
    """Three 4-frame clips (red, green, blue), the last one named with a byte that is not UTF-8."""
    folder = os.fsencode(str(tmp_path / "clips"))
    os.mkdir(folder)
    paths = []
    for name, rgb in ((b"red.mp4", (220, 30, 30)), (b"green.mp4", (30, 200, 40)), (b"blue_\xff.mp4", (40, 50, 220))):
        frames = [np.full((72, 72, 3), 20, np.uint8) for _ in range(4)]
        for t, frame in enumerate(frames):
            frame[20:52, 8 + 6 * t : 40 + 6 * t] = rgb
        write_video(tmp_path / "clip.mp4", frames)
        os.replace(tmp_path / "clip.mp4", os.path.join(folder, name))
        paths.append(os.fsdecode(os.path.join(folder, name)))
    return paths


def build(model, videos, out):
    return build_index(model, videos, out, batch_size=2, shard_size=1, num_workers=0, progress=False)


@pytest.mark.quick
def test_malformed_and_foreign_index_lines_are_ignored_then_repaired(lvt_model, videos, tmp_path, caplog):
    out = tmp_path / "index"
    assert build(lvt_model, videos, out) == {"encoded": 3, "skipped": 0, "errors": 0}
    reference = VideoIndex.load(out)
    assert sorted(reference.videos) == sorted(videos)  # the non-UTF-8 name round-trips
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    lines = (out / "index.jsonl").read_text(encoding="ascii").splitlines()
    first, second, third = (json.loads(line) for line in lines)
    (out / "index.jsonl").write_text(
        "\n".join(
            [
                json.dumps(first),
                json.dumps(second | {"shard": "../victim.txt"}),
                json.dumps(third | {"shard": str(victim)}),
                json.dumps({"video": "x", "row": 0}),
                json.dumps(first | {"row": "zero"}),
                "{not json",
                "[]",
            ]
        )
        + "\n"
    )
    index_file = out / "index.jsonl"
    with caplog.at_level(logging.WARNING, logger="encoder.videoprism.features"):
        assert VideoIndex.load(out).videos == [first["video"]]  # loads what is valid
        for number in range(2, 8):
            assert f"{index_file}:{number}: " in caplog.text
        assert build(lvt_model, videos, out) == {"encoded": 2, "skipped": 1, "errors": 0}
    assert victim.read_text() == "keep me" and [p.name for p in tmp_path.glob("victim*")] == ["victim.txt"]
    assert len((out / "index.jsonl.malformed").read_text().splitlines()) == 6
    repaired = VideoIndex.load(out)
    order = [repaired.videos.index(video) for video in reference.videos]
    torch.testing.assert_close(repaired.embeddings[order], reference.embeddings)


@pytest.mark.quick
def test_a_line_past_the_end_of_a_shard_is_a_message_and_a_resume_repairs_it(lvt_model, videos, tmp_path):
    out = tmp_path / "index"
    build(lvt_model, videos, out)
    reference = VideoIndex.load(out)
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    lines[1]["row"] = 5
    (out / "index.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(VideoIndexError, match=r"points at row 5 of shard-00001.safetensors, which holds 1 rows"):
        VideoIndex.load(out)
    assert build(lvt_model, videos, out) == {"encoded": 1, "skipped": 2, "errors": 0}
    assert not list(out.glob("*.corrupt"))  # the shard's valid rows were kept
    repaired = VideoIndex.load(out)
    order = [repaired.videos.index(video) for video in reference.videos]
    torch.testing.assert_close(repaired.embeddings[order], reference.embeddings)
