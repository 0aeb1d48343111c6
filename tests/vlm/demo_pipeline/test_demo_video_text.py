"""The shipped demo video-text model (vlm/demo_model/video_text/): the default of index, search and
classify; on freshly generated moving-shapes clips (a seed the corpus never used) search by caption
finds the right clip and zero-shot colour labels are right."""

from __future__ import annotations

import json

import pytest

from vlm.cli.main import main as cli_main
from vlm.retrieval.video_text_model import DEMO_VIDEO_TEXT_MODEL, MODEL_ENVIRONMENT_VARIABLE, default_video_text_model
from vlm.shapes import PALETTE, ShapesConfig, encode_mp4, render_clip, sample_clip_attributes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fresh_clips(tmp_path_factory):
    """One one-object clip per colour (8), drawn with a seed the demo corpus never used: (path, attributes)."""
    root = tmp_path_factory.mktemp("fresh")
    config = ShapesConfig()
    found = {}
    for index in range(4000):
        attributes = sample_clip_attributes(index, "test", config, 4242, heldout=[])
        colour = attributes.objects[0].colour
        if attributes.count != 1 or colour in found:
            continue
        path = root / f"{colour}.mp4"
        encode_mp4(render_clip(attributes), path, fps=config.fps)
        found[colour] = (path, attributes)
        if len(found) == len(PALETTE):
            return root, found
    raise AssertionError("could not draw a clip of every colour")


def test_default_video_text_model_is_the_shipped_one(monkeypatch):
    monkeypatch.delenv(MODEL_ENVIRONMENT_VARIABLE, raising=False)
    assert default_video_text_model() == str(DEMO_VIDEO_TEXT_MODEL)
    assert (DEMO_VIDEO_TEXT_MODEL / "model.safetensors").is_file() and (DEMO_VIDEO_TEXT_MODEL / "README.md").is_file()
    monkeypatch.setenv(MODEL_ENVIRONMENT_VARIABLE, "elsewhere")
    assert default_video_text_model() == "elsewhere"


def test_search_by_caption_finds_the_clip(fresh_clips, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(MODEL_ENVIRONMENT_VARIABLE, raising=False)
    folder, clips = fresh_clips
    assert cli_main(["index", str(folder), "--out", str(tmp_path / "index"), "--workers", "0", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["encoded"] == len(clips)
    queries = [f"a {colour} {attributes.objects[0].shape}" for colour, (_, attributes) in clips.items()]
    assert cli_main(["search", str(tmp_path / "index"), *queries, "--top", "1", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    found = [result["results"][0]["video"] for result in results]
    right = sum(hit.endswith(f"/{colour}.mp4") for hit, colour in zip(found, clips))
    assert right >= 7, f"top-1 right for {right} of 8 queries: {list(zip(queries, found))}"


@pytest.mark.quick
def test_zero_shot_colour_labels(fresh_clips, capsys, monkeypatch):
    monkeypatch.delenv(MODEL_ENVIRONMENT_VARIABLE, raising=False)
    folder, clips = fresh_clips
    labels = ",".join(PALETTE)
    templates = folder / "templates.txt"
    templates.write_text(
        "".join(f"a {{}} {shape}\n" for shape in ("circle", "square", "triangle", "star", "cross", "heart"))
    )
    assert (
        cli_main(
            ["classify", str(folder), "--labels", labels, "--templates", str(templates), "--json", "--workers", "0"]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    right = sum(r["labels"][0]["label"] == r["video"].rsplit("/", 1)[-1].removesuffix(".mp4") for r in results)
    assert len(results) == len(clips) and right >= 7, results
