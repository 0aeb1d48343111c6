"""`prism-vlm chat VIDEO`: one-shot turns (--message, --json) equal the library's chat with the same
history; the interactive loop streams replies, /reset forgets the history, /quit leaves; bad flags
give clear errors. Also the chat-accuracy scoring of ``vlm.shapes.chat_eval``. Tiny random glue."""

from __future__ import annotations

import json

import pytest

from tests.helpers.tiny_glue import FRAMES, build_tiny_glue, save_tiny_glue, write_clip
from vlm.cli.main import main
from vlm.inference.assistant import VideoAssistant
from vlm.shapes.chat_eval import chat_accuracy, named_answers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm2_tokenizer):
    from vlm.model import PrismVlmForConditionalGeneration

    root = tmp_path_factory.mktemp("chat")
    glue = save_tiny_glue(build_tiny_glue(smollm2_tokenizer), smollm2_tokenizer, root)
    clip = write_clip(root / "clip.mp4", seed=3)
    model = PrismVlmForConditionalGeneration.from_pretrained(glue)
    return {"glue": glue, "clip": str(clip), "model": model, "clips": VideoAssistant(model).load_videos([clip], FRAMES)}


def _reply(setup, messages) -> str:
    return VideoAssistant(setup["model"]).chat(messages, clips=setup["clips"], max_new_tokens=6).strip()


def test_one_shot_turns_equal_the_library_chat(setup, capsys):
    code = main(
        [
            "chat",
            setup["clip"],
            "--model",
            str(setup["glue"]),
            "--message",
            "What is this?",
            "--message",
            "  And   then? ",
            "--json",
            "--max-new-tokens",
            "6",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    turns = json.loads(capsys.readouterr().out)["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2]["content"] == "And then?"  # whitespace normalised
    first = _reply(setup, [{"role": "user", "content": "What is this?"}])
    assert turns[1]["content"] == first
    assert turns[3]["content"] == _reply(setup, [turns[0], {"role": "assistant", "content": first}, turns[2]])
    # without --json the replies are printed as they stream
    assert (
        main(
            [
                "chat",
                setup["clip"],
                "--model",
                str(setup["glue"]),
                "--message",
                "What is this?",
                "--max-new-tokens",
                "6",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines() == ["you> What is this?", f"assistant> {first}"]


def test_interactive_reset_and_quit(setup, capsys, monkeypatch):
    lines = iter(["What is this?", "", "/bogus", "/reset", "Again?", "/quit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", setup["clip"], "--model", str(setup["glue"]), "--max-new-tokens", "6", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    replies = [line.removeprefix("assistant> ") for line in captured.out.splitlines() if line.startswith("assistant> ")]
    assert replies == [
        _reply(setup, [{"role": "user", "content": "What is this?"}]),
        _reply(setup, [{"role": "user", "content": "Again?"}]),
    ]  # after /reset: no history
    assert "unknown command '/bogus'" in captured.err and "(new conversation)" in captured.err
    assert next(lines) == "never read"  # /quit stopped reading
    lines = iter([])  # end of input leaves too

    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", eof)
    assert main(["chat", setup["clip"], "--model", str(setup["glue"]), "--device", "cpu"]) == 0


def test_bad_flags_and_files_give_clear_errors(setup, capsys, tmp_path):
    assert main(["chat", setup["clip"], "--model", str(setup["glue"]), "--json"]) == 2
    assert "--json needs --message" in capsys.readouterr().err
    assert main(["chat", setup["clip"], "--model", str(setup["glue"]), "--message", "  "]) == 2
    assert "must not be empty" in capsys.readouterr().err
    assert main(["chat", str(tmp_path / "missing.mp4"), "--model", str(setup["glue"]), "--message", "hi"]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert main(["chat", str(tmp_path / "bad.mp4"), "--model", str(setup["glue"]), "--message", "hi"]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    for flag in ("--max-exchanges", "--max-new-tokens", "--frames"):  # refused when parsed, before any model work
        with pytest.raises(SystemExit) as refused:
            main(
                [
                    "chat",
                    str(tmp_path / "missing.mp4"),
                    "--model",
                    str(tmp_path / "no-model"),
                    "--message",
                    "hi",
                    flag,
                    "0",
                ]
            )
        assert refused.value.code == 2 and f"{flag}: must be" in capsys.readouterr().err


def test_chat_replies_are_scored_by_the_answer_words_they_name():
    from vlm.shapes import ShapesConfig, sample_clip_attributes

    assert named_answers("The object is cyan.", "colour") == {"cyan"}
    assert named_answers("It is red, or maybe blue", "colour") == {"red", "blue"}
    assert named_answers("The star is moving up.", "motion") == {"up"}
    assert named_answers("Rotating clockwise", "motion") == {"rotating"}
    assert named_answers("There is one shape.", "count") == {"one"}
    assert named_answers("Someone drums.", "colour") == set()
    clips = [sample_clip_attributes(i, "test", ShapesConfig(), 5, heldout=[]) for i in range(30)]
    truthful = chat_accuracy(
        clips,
        lambda clip, message: f"The object is {clip.objects[0].colour} and {clip.motion}.",
        kinds=("colour", "motion"),
    )
    assert truthful["colour"]["accuracy"] == 1.0 and truthful["motion"]["accuracy"] == 1.0
    assert truthful["colour"]["clips"] == sum(c.count == 1 for c in clips)
    constant = chat_accuracy(clips, lambda clip, message: "The object is a square.")  # the old demo model's reply
    assert all(result["accuracy"] == 0.0 and result["distinct_replies"] == 1 for result in constant.values())
    counted = chat_accuracy(clips, lambda clip, message: "There is one shape.", kinds=("count",))
    assert counted["count"]["clips"] == 30
    assert counted["count"]["accuracy"] == pytest.approx(sum(c.count == 1 for c in clips) / 30)
