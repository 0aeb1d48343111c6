"""The lmms-eval models ``prism_vlm`` and ``prism_vlm_chat``, run through lmms-eval itself on local tasks over
generated shapes clips (tests/helpers/lmms_tasks.py), with the shipped demo glue.

These need the ``lmms`` extra: .ci/run installs it in a second environment (scripts/test_lmms.sh) and runs
this module there; where lmms-eval is not installed the module is skipped with that reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval", reason="needs the lmms extra: bash scripts/test_lmms.sh runs these")

from encoder.common.errors import UsageError  # noqa: E402
from tests.helpers.lmms_tasks import write_lmms_tasks  # noqa: E402
from vlm.cli import main as cli  # noqa: E402

pytestmark = [pytest.mark.real_llm, pytest.mark.slow]

NUM_QUESTIONS = 9  # and one more whose video is unreadable


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Questions about generated shapes clips: rows of the lmms-eval dataset, the last one's video broken."""
    from vlm.shapes.corpus import make_shapes_corpus

    root = tmp_path_factory.mktemp("lmms")
    corpus = make_shapes_corpus(root / "corpus", 4, seed=23, progress=False)
    qa = [json.loads(line) for line in (corpus / "qa.jsonl").read_text().splitlines()][:NUM_QUESTIONS]
    choices = sorted({q["answer"] for q in qa} | {"banana"})
    rows = [
        {
            "video": str(corpus / q["video"]),
            "question": q["question"],
            "answer": q["answer"],
            "choices": choices,
            "follow_up": qa[(i + 1) % len(qa)]["question"],
        }
        for i, q in enumerate(qa)
    ]
    broken = root / "broken.mp4"
    broken.write_bytes(b"not a video " * 50)
    answer = next(c for c in choices if c != choices[0])  # not the first choice (which an all-inf row picks)
    rows.append({**rows[0], "video": str(broken), "answer": answer})
    return {"root": root, "rows": rows, "choices": choices, "tasks": write_lmms_tasks(root / "tasks", rows)}


def _evaluate(model: str, tasks: list[str], shapes, protocol: Path, extra: str = "", limit: int | None = None) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    return simple_evaluate(
        model=model,
        model_args=f"device=cpu,protocol={protocol}{extra}",
        tasks=tasks,
        task_manager=TaskManager(include_path=str(shapes["tasks"])),
        batch_size=4,
        log_samples=True,
        limit=limit,
    )


@pytest.fixture(scope="module")
def simple_run(shapes, offline):
    """The three simple tasks, the videos decoded by 2 worker processes (which a run this small would not start)."""
    import vlm.evaluation.lmms_model

    protocol = shapes["root"] / "simple" / "protocol.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vlm.evaluation.lmms_model, "WORKERS_FROM_BATCHES", 0)
        tasks = ["prism_shapes_mc", "prism_shapes_open", "prism_shapes_rounds"]
        out = _evaluate("prism_vlm", tasks, shapes, protocol, ",workers=2")
    return out, json.loads(protocol.read_text())


@pytest.fixture(scope="module")
def assistant():
    from vlm.inference.assistant import load_assistant

    return load_assistant(device="cpu")


def _by_doc(samples) -> dict[int, dict]:
    return {sample["doc_id"]: sample for sample in samples}


def test_entry_point_registers_both_models():
    from lmms_eval.models import get_model

    from vlm.evaluation.lmms_model import PrismVlm, PrismVlmChat

    assert get_model("prism_vlm") is PrismVlm and get_model("prism_vlm_chat") is PrismVlmChat
    assert PrismVlm.is_simple and not PrismVlmChat.is_simple


def test_multiple_choice_accuracy_equals_eval_qa_closed(simple_run, shapes, tmp_path, capsys):
    out, _ = simple_run
    data = tmp_path / "test.jsonl"
    data.write_text(
        "".join(json.dumps({k: r[k] for k in ("video", "question", "answer")}) + "\n" for r in shapes["rows"])
    )
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("\n".join(shapes["choices"]) + "\n")
    results, predictions = tmp_path / "results.json", tmp_path / "predictions.jsonl"
    argv = ["eval-qa", "--data", str(data), "--mode", "closed", "--candidates-file", str(candidates)]
    argv += [
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(results),
        "--predictions",
        str(predictions),
    ]
    assert cli.main(argv) == 0
    capsys.readouterr()
    eval_qa = json.loads(results.read_text())
    accuracy = out["results"]["prism_shapes_mc"]["acc,none"]
    assert 0 < accuracy < 1  # a real comparison: some right, some wrong
    assert accuracy * 100 == pytest.approx(eval_qa["accuracy"])
    # question by question: lmms-eval's choice (the smallest loss) is eval-qa's prediction
    predicted = [json.loads(line) for line in predictions.read_text().splitlines()]
    for doc_id, sample in sorted(_by_doc(out["samples"]["prism_shapes_mc"]).items()):
        losses = [response[0][0] for response in sample["resps"]]
        if doc_id == len(shapes["rows"]) - 1:  # the unreadable video: no answer, every choice infinitely unlikely
            assert all(math.isinf(loss) for loss in losses) and predicted[doc_id]["prediction"] is None
            continue
        assert shapes["choices"][losses.index(min(losses))] == predicted[doc_id]["prediction"]


def test_losses_are_the_exact_negative_log_likelihoods(simple_run, shapes, assistant):
    out, _ = simple_run
    sample = _by_doc(out["samples"]["prism_shapes_mc"])[1]
    row = shapes["rows"][1]
    ranked = assistant.score_answers(row["question"], shapes["choices"], clips=assistant.load_videos([row["video"]]))
    expected = {scored.answer: -scored.log_likelihood for scored in ranked}
    losses = [response[0][0] for response in sample["resps"]]
    assert losses == pytest.approx([expected[choice] for choice in shapes["choices"]], abs=1e-3)


def test_generate_until_answers_equal_prism_vlm_ask(simple_run, shapes, capsys):
    out, _ = simple_run
    samples = _by_doc(out["samples"]["prism_shapes_open"])
    for doc_id in (0, 5):
        row = shapes["rows"][doc_id]
        assert cli.main(["ask", row["video"], row["question"], "--device", "cpu"]) == 0
        asked = capsys.readouterr().out.strip()
        assert asked and samples[doc_id]["resps"][0][0] == asked
    assert samples[len(shapes["rows"]) - 1]["resps"][0][0] == ""  # the unreadable video: no answer


def test_multi_round_answers_each_round_as_ask_would(simple_run, shapes, assistant):
    out, _ = simple_run
    samples = _by_doc(out["samples"]["prism_shapes_rounds"])
    for doc_id in (0, 2):
        row = shapes["rows"][doc_id]
        rounds = samples[doc_id]["resps"][0][0]
        expected = [
            assistant.ask_video(row["video"], q, max_new_tokens=16) for q in (row["question"], row["follow_up"])
        ]
        assert rounds == expected


def test_chat_model_replies_as_the_library_chat(shapes, offline, assistant):
    protocol = shapes["root"] / "chat" / "protocol.json"
    out = _evaluate("prism_vlm_chat", ["prism_shapes_chat", "prism_shapes_rounds"], shapes, protocol)
    samples = _by_doc(out["samples"]["prism_shapes_chat"])
    rounds = _by_doc(out["samples"]["prism_shapes_rounds"])
    for doc_id in (0, 4):
        row = shapes["rows"][doc_id]
        clips = assistant.load_videos([row["video"]])
        expected = assistant.chat([{"role": "user", "content": row["question"]}], clips=clips, max_new_tokens=24)
        assert samples[doc_id]["resps"][0][0] == expected.strip() and expected.strip()
        # multi-round: the rounds are one conversation
        conversation = [{"role": "user", "content": row["question"]}]
        first = assistant.chat(conversation, clips=clips, max_new_tokens=16).strip()
        conversation += [{"role": "assistant", "content": first}, {"role": "user", "content": row["follow_up"]}]
        second = assistant.chat(conversation, clips=clips, max_new_tokens=16).strip()
        assert rounds[doc_id]["resps"][0][0] == [first, second]
    card = json.loads(protocol.read_text())
    assert card["settings"]["prompt_template"] == "chat" and card["settings"]["harness"]["model"] == "PrismVlmChat"
    assert card["settings"]["tasks"]["prism_shapes_chat"]["requests"] == {"generate_until": len(shapes["rows"])}
    assert card["settings"]["tasks"]["prism_shapes_rounds"]["requests"] == {
        "generate_until_multi_round": len(shapes["rows"])
    }


def test_long_video_windows_ask_each_question_on_its_window(shapes, offline, assistant, tmp_path, monkeypatch):
    """window=0.5 reads the 2-s clips as 4 windows: each question is scored on the window LongVideoQA picks."""
    from vlm.long_video.questions import LongVideoQA
    from vlm.long_video.reading import read_long_video
    from vlm.retrieval.video_text_model import default_video_text_model, load_video_text_model

    monkeypatch.setenv("PRISM_VLM_CACHE", str(tmp_path / "cache"))
    out = _evaluate("prism_vlm", ["prism_shapes_mc"], shapes, tmp_path / "protocol.json", ",window=0.5", limit=2)
    video_text = load_video_text_model(default_video_text_model(), device="cpu")
    whole = []
    for doc_id, sample in sorted(_by_doc(out["samples"]["prism_shapes_mc"]).items()):
        row = shapes["rows"][doc_id]
        video = read_long_video(row["video"], model=assistant.model, video_text_model=video_text, window_s=0.5)
        assert len(video.spans) == 4
        question, _, features = LongVideoQA(assistant, video_text, video).moment(row["question"])
        ranked = assistant.score_answers(question, shapes["choices"], video_features=features)
        expected = {scored.answer: -scored.log_likelihood for scored in ranked}
        losses = [response[0][0] for response in sample["resps"]]
        assert losses == pytest.approx([expected[choice] for choice in shapes["choices"]], abs=1e-3)
        whole.append(
            assistant.score_answers(row["question"], shapes["choices"], clips=assistant.load_videos([row["video"]]))
        )
    assert any(  # a window is not the whole clip
        loss != pytest.approx(-scored.log_likelihood, abs=1e-3)
        for sample, ranked in zip(sorted(out["samples"]["prism_shapes_mc"], key=lambda s: s["doc_id"]), whole)
        for loss, scored in zip(
            [r[0][0] for r in sample["resps"]], sorted(ranked, key=lambda a: shapes["choices"].index(a.answer))
        )
    )


def test_protocol_card_records_what_decided_the_scores(simple_run, shapes):
    _, card = simple_run
    from vlm.model import default_model_dir

    assert card["decoding"]["frames"] == 8 and card["decoding"]["frame_size"] == 64
    assert "centres of num_frames equal segments" in card["decoding"]["rule"]
    assert card["software"]["decoder"].startswith("PyAV ") and card["package"]["version"]
    model = card["model"]
    assert model["directory"] == str(default_model_dir()) and model["prompts"]["qa_template"]
    assert model["weights_sha256"] and all(len(h) == 64 for h in model["weights_sha256"].values())
    settings = card["settings"]
    assert settings["harness"]["name"] == "lmms-eval" and settings["harness"]["version"] == lmms_eval_version()
    assert settings["model_args"]["batch_size"] == 4 and settings["model_args"]["score"] == "loss"
    tasks, count = settings["tasks"], len(shapes["rows"])
    assert tasks["prism_shapes_mc"]["requests"] == {"loglikelihood": count * len(shapes["choices"])}
    assert tasks["prism_shapes_open"]["gen_kwargs"] == [{"max_new_tokens": 32, "temperature": 0, "until": ["\n\n"]}]
    assert tasks["prism_shapes_rounds"]["requests"] == {"generate_until_multi_round": count}
    assert set(settings["unanswered"]) == {f"{task}/test/{count - 1}" for task in tasks}
    assert all("broken.mp4" in reason for reason in settings["unanswered"].values())


def lmms_eval_version() -> str:
    from importlib.metadata import version

    return version("lmms-eval")


# ---------------------------------------------------------------------------------------------------- arguments


def test_model_arguments_are_checked():
    from vlm.evaluation.lmms_model import LmmsModelSettings

    settings = LmmsModelSettings.from_model_args({"batch_size": "16", "num_frames": "32", "max_batch_size": None})
    assert settings.batch_size == 16 and settings.num_frames == 32 and settings.prompt == "qa"
    with pytest.raises(UsageError, match="unknown prism_vlm model argument 'frames'.*num_frames"):
        LmmsModelSettings.from_model_args({"frames": 8})
    for bad in (
        {"prompt": "poem"},
        {"score": "probability"},
        {"batch_size": 0},
        {"num_frames": "many"},
        {"window": -1},
    ):
        with pytest.raises(UsageError):
            LmmsModelSettings.from_model_args(bad)


def test_gen_kwargs_become_generation_settings():
    from vlm.evaluation.lmms_model import cut_at, generation_settings

    greedy, until = generation_settings({"max_new_tokens": 100000, "temperature": 0, "until": "\n"}, 32)
    assert greedy.is_greedy and greedy.max_new_tokens == 8192 and until == ["\n"]
    sampled, _ = generation_settings({"temperature": 0.7, "top_p": 0.9}, 32)
    assert sampled.samples and sampled.temperature == 0.7 and sampled.top_p == 0.9 and sampled.max_new_tokens == 32
    assert generation_settings({"do_sample": False, "temperature": None, "num_beams": 3}, 8)[0].num_beams == 3
    assert cut_at("a red star\n\nmore", ["\n\n", "star"]) == "a red "
    for bad in ({"num_beams": 1000}, {"top_p": 5, "temperature": 1}, {"max_new_tokens": "lots"}):
        with pytest.raises(UsageError, match="gen_kwargs"):
            generation_settings(bad, 32)


def test_visuals_and_messages_are_read_or_refused_clearly():
    from PIL import Image

    from vlm.evaluation.lmms_model import chat_messages, video_source

    assert video_source(["a.mp4"]).path == "a.mp4"
    window = video_source([{"video": "a.mp4", "video_start": 2, "video_end": 5.5}])
    assert (window.path, window.start, window.end) == ("a.mp4", 2.0, 5.5)
    frames = [Image.new("RGB", (8, 8)) for _ in range(3)]
    assert len(video_source(frames).frames) == 3
    with pytest.raises(UsageError, match="one video per question"):
        video_source(["a.mp4", "b.mp4"])
    with pytest.raises(UsageError, match="one video per question"):
        video_source([])
    with pytest.raises(UsageError, match="must be seconds"):
        video_source([{"path": "a.mp4", "start": "soon"}])
    conversation, visuals = chat_messages(
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "video", "url": "a.mp4"}, {"type": "text", "text": "What moves?"}]},
        ]
    )
    assert conversation == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What moves?"}]
    assert visuals == ["a.mp4"]
    with pytest.raises(UsageError, match="end with a user turn"):
        chat_messages([{"role": "assistant", "content": "hi"}])


def test_unconditional_requests_score_the_choice_without_video(offline):
    """lmms-eval's acc_mutual_info adds ("", choice) requests: no video, no task document."""
    import torch
    from lmms_eval.api.instance import Instance

    from vlm.evaluation.lmms_model import PrismVlm
    from vlm.model import default_model_dir

    glue = default_model_dir()
    with pytest.warns(UserWarning, match="no protocol=PATH"):
        model = PrismVlm(pretrained=str(glue), device="cpu", score="logprob")
    card = model.protocol_card()["model"]  # the glue given by its folder: that folder's weight files hashed
    assert card["directory"] == str(glue) and set(card["weights_sha256"]) == {"resampler.safetensors"}
    requests = [
        Instance("loglikelihood", ("", choice), i, metadata={"task": "t", "doc_id": 0, "repeats": 1})
        for i, choice in enumerate(["red", "the cat sat on the mat"])
    ]
    scores = [result.text if hasattr(result, "text") else result for result in model.loglikelihood(requests)]
    tokenizer, llm = model.assistant.tokenizer, model.assistant.model.llm
    for (log_likelihood, _), choice in zip(scores, ["red", "the cat sat on the mat"]):
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start, *tokenizer(" " + choice, add_special_tokens=False)["input_ids"]]
        with torch.inference_mode():
            log_probs = torch.log_softmax(llm(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
        expected = float(log_probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
        assert log_likelihood == pytest.approx(expected, abs=1e-3) and log_likelihood < 0
