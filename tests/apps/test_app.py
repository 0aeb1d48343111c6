"""The Gradio app, served on localhost and driven with gradio_client: /caption, /ask (open and
closed vocabulary), /chat (streamed, multi-turn), readable errors for bad input (the server stays
up), upload and duration limits, concurrent requests, what the server serves from disk; the
frame strip and the ``prism-vlm app`` command line.

A tiny random glue (VideoPrism 32 wide, 2 frames of 36 px + a 2-layer Llama with SmolLM2's
tokenizer) is saved to a folder and loaded with ``load_model`` as ``prism-vlm app --model`` does.
Every answer is compared with the library called directly on the same clip.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import hostile_media
from tests.helpers.app_server import LIMITS, free_port
from tests.helpers.tiny_glue import FRAMES, SIZE, write_clip
from tests.helpers.video_factory import write_video
from vlm.inference.assistant import VideoAssistant

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    gif = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]
    gif[0].save(root / "noise.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    long_frames = [np.full((32, 32, 3), i * 20, np.uint8) for i in range(12)]
    (root / "examples").mkdir()
    return {
        "a": write_clip(root / "a.mp4", seed=0),
        "b": write_clip(root / "b.mp4", seed=1),
        "c": write_clip(root / "c.mkv", seed=2),
        "gif": root / "noise.gif",
        "long": write_video(root / "long.mp4", long_frames, fps=2),  # 6 s > max_duration_s
        "example": write_clip(root / "examples" / "example.mp4", seed=3),
    }


@pytest.fixture(scope="module")
def app(glue_dir, clips, tmp_path_factory):
    """(url, service, demo) of the app served in this process on a free port."""
    from apps.limits import AppLimits
    from apps.service import ModelService
    from apps.video_chat import launch_app
    from vlm.model import load_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("uploads")))
        service = ModelService(load_model(glue_dir), AppLimits(**LIMITS), model_dir=glue_dir)
        demo = launch_app(service, port=free_port(), examples=[clips["example"]], prevent_thread_lock=True, quiet=True)
        try:
            yield demo.local_url, service, demo
        finally:
            demo.close()


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    return Client(app[0], analytics_enabled=False, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def upload(path: Path):
    from gradio_client import handle_file

    return handle_file(str(path))


def library_clip(service, path: Path, frames: int = FRAMES) -> torch.Tensor:
    return VideoAssistant(service.model).load_videos([path], num_frames=frames)


# ------------------------------------------------------------------------------------ endpoints


@pytest.mark.quick
def test_caption_endpoint_equals_the_library_with_the_settings_passed(app, client, clips):
    _, service, _ = app
    for frames, tokens in ((FRAMES, 6), (4, 3)):
        expected = VideoAssistant(service.model).caption(
            clips=library_clip(service, clips["a"], frames), max_new_tokens=tokens
        )[0]
        got = client.predict(upload(clips["a"]), frames, tokens, api_name="/caption")
        assert got == expected


def test_caption_reads_every_offered_container(app, client, clips):
    _, service, _ = app
    for name in ("c", "gif"):
        expected = VideoAssistant(service.model).caption(clips=library_clip(service, clips[name]), max_new_tokens=4)[0]
        assert client.predict(upload(clips[name]), FRAMES, 4, api_name="/caption") == expected


def test_open_vocabulary_answer(app, client, clips):
    _, service, _ = app
    question = "what is moving?"
    expected = VideoAssistant(service.model).answer(
        [question], clips=library_clip(service, clips["a"]), max_new_tokens=5
    )[0]
    answer, probabilities = client.predict(upload(clips["a"]), question, "", FRAMES, 5, api_name="/ask")
    assert answer == expected
    assert probabilities == []


def test_a_long_ranking_runs_in_slices_that_let_other_requests_in(app, clips, monkeypatch):
    """150 candidates: the prefix, then ceil(150 / RANKING_SLICE) slices, each its own piece of model work (other
    requests run between them), with the library's ranking."""
    from apps.service import RANKING_SLICE

    _, service, _ = app
    candidates = [f"answer number {i}" for i in range(150)]
    pieces = []
    original = service.run_model_work

    def counted(work):
        pieces.append(work)
        return original(work)

    monkeypatch.setattr(service, "run_model_work", counted)
    result = service.ask(str(clips["a"]), "what is it?", candidates, FRAMES)
    assert len(pieces) == 1 + math.ceil(len(candidates) / RANKING_SLICE) > 2
    expected = VideoAssistant(service.model).score_answers(
        "what is it?", candidates, clips=library_clip(service, clips["a"])
    )
    assert [s.answer for s in result.ranked] == [s.answer for s in expected]
    for got, want in zip(result.ranked, expected):
        assert got.log_likelihood == pytest.approx(want.log_likelihood, abs=1e-4)


def test_closed_vocabulary_answer_with_probabilities(app, client, clips):
    _, service, _ = app
    question, candidates = "what colour is it?", ["red", "blue", "green", "a yellow square"]
    answer, probabilities = client.predict(
        upload(clips["a"]), question, " red, blue,green , a yellow square,, red ", FRAMES, 5, api_name="/ask"
    )
    assert [row["answer"] for row in probabilities] == sorted(
        candidates, key=lambda c: -next(r["probability"] for r in probabilities if r["answer"] == c)
    )
    assert sorted(row["answer"] for row in probabilities) == sorted(candidates)  # parsed, duplicates dropped
    assert math.isclose(sum(row["probability"] for row in probabilities), 1.0, abs_tol=1e-6)
    assert answer == probabilities[0]["answer"]
    expected = VideoAssistant(service.model).score_answers(
        question, candidates, clips=library_clip(service, clips["a"])
    )
    assert [s.answer for s in expected] == [row["answer"] for row in probabilities]
    for scored, row in zip(expected, probabilities):
        assert row["probability"] == pytest.approx(scored.probability, abs=1e-5)
        assert row["log_likelihood"] == pytest.approx(scored.log_likelihood, abs=1e-4)
    # one per line works too
    _, by_line = client.predict(
        upload(clips["a"]), question, "red\nblue\ngreen\na yellow square", FRAMES, 5, api_name="/ask"
    )
    assert by_line == probabilities


def test_chat_streams_tokens_and_keeps_the_conversation(app, client, clips):
    _, service, _ = app
    clip = library_clip(service, clips["a"])
    job = client.submit(upload(clips["a"]), "what happens in the video?", [], FRAMES, 8, api_name="/chat")
    history, cleared_box = job.result()
    assert cleared_box == ""
    replies = [chat_reply(output[0]) for output in job.outputs()]
    expected = VideoAssistant(service.model).chat(
        [{"role": "user", "content": "what happens in the video?"}], clips=clip, max_new_tokens=8
    )
    assert replies[-1] == expected.strip()  # the Chatbot component strips message text
    assert len(set(replies)) >= 3, "the reply should arrive in several pieces"
    assert all(later.startswith(earlier) for earlier, later in zip(replies, replies[1:]))
    assert [turn["role"] for turn in history] == ["user", "assistant"]

    history2, _ = client.predict(upload(clips["a"]), "and then?", history, FRAMES, 6, api_name="/chat")
    assert [turn["role"] for turn in history2] == ["user", "assistant", "user", "assistant"]
    expected2 = VideoAssistant(service.model).chat(
        [
            {"role": "user", "content": "what happens in the video?"},
            {"role": "assistant", "content": expected.strip()},
            {"role": "user", "content": "and then?"},
        ],
        clips=clip,
        max_new_tokens=6,
    )
    assert chat_reply(history2) == expected2.strip()


def chat_reply(history: list[dict]) -> str:
    from apps.service import chat_text

    return chat_text(history[-1]["content"])


def test_concurrent_requests_all_answered_and_equal_to_serial_results(app, client, clips):
    _, service, _ = app
    names = ["a", "b", "c", "a", "b", "c"]
    expected = {
        n: VideoAssistant(service.model).caption(clips=library_clip(service, clips[n]), max_new_tokens=6)[0]
        for n in set(names)
    }
    results: dict[int, str] = {}

    def run(index: int, name: str) -> None:
        results[index] = client.predict(upload(clips[name]), FRAMES, 6, api_name="/caption")

    threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert {i: results.get(i) for i in range(len(names))} == {i: expected[n] for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------ errors and limits


def test_bad_input_gives_a_readable_message_and_the_server_stays_up(app, client, clips, tmp_path):
    from gradio_client.exceptions import AppError

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    cases = [
        ((upload(garbage), FRAMES, 4), "/caption", "garbage.mp4"),
        ((upload(text), FRAMES, 4), "/caption", "one of these formats"),  # gr.File checks the type
        ((None, FRAMES, 4), "/caption", "Upload a video"),
        ((upload(clips["long"]), FRAMES, 4), "/caption", "6.0 s long"),
        ((upload(clips["a"]), 99, 4), "/caption", "greater than maximum value 8"),  # the slider checks it
        ((upload(clips["a"]), "   ", "", FRAMES, 4), "/ask", "question is empty"),
        ((upload(clips["a"]), "what?", " , ,\n", FRAMES, 4), "/ask", "No candidate answers"),
        ((upload(garbage), "what?", "red, blue", FRAMES, 4), "/ask", "garbage.mp4"),
        ((upload(clips["a"]), "  ", [], FRAMES, 4), "/chat", "message is empty"),
        ((None, "hello", [], FRAMES, 4), "/chat", "Upload a video"),
    ]
    for args, endpoint, fragment in cases:
        with pytest.raises(AppError) as error:
            client.predict(*args, api_name=endpoint)
        message = str(error.value)
        assert fragment in message, (endpoint, message)
        assert "Traceback" not in message and 'File "' not in message
    # still serving
    assert isinstance(client.predict(upload(clips["b"]), FRAMES, 3, api_name="/caption"), str)


def test_upload_over_the_size_limit_is_refused(app, client, clips, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(bytes(int(LIMITS["max_upload_mb"] * 2**20) + 1))
    with pytest.raises(ValueError) as error:  # gradio_client checks the component's max_file_size before uploading
        client.predict(upload(big), FRAMES, 4, api_name="/caption")
    assert "413" in str(error.value) or "large" in str(error.value).lower() or "size" in str(error.value).lower()
    assert isinstance(client.predict(upload(clips["a"]), FRAMES, 3, api_name="/caption"), str)


def test_service_rejects_oversized_files_on_its_own(app, tmp_path):
    """Defence in depth: a file that did not come through the upload route is checked too."""
    from apps.service import AppInputError

    _, service, _ = app
    big = tmp_path / "big.mp4"
    big.write_bytes(bytes(int(LIMITS["max_upload_mb"] * 2**20) + 1))
    with pytest.raises(AppInputError, match="accepts videos up to 0.25 MB"):
        service.caption(big)


def test_frame_size_switch_mid_stream_is_refused_by_the_decoder(app, tmp_path, monkeypatch):
    """The header check sees 64x64; the decoder refuses frames over max_side_px ** 2 pixels before
    decoding them, so the clip is captioned from the frames before the switch and no large frame is
    ever converted."""
    import dataclasses

    import encoder.video.decode as video
    from tests.helpers.video_factory import write_resolution_switch

    _, service, _ = app
    path = write_resolution_switch(tmp_path / "switch.ts", large=640, frames_each=10).rename(tmp_path / "switch.mp4")
    monkeypatch.setattr(service, "limits", dataclasses.replace(service.limits, max_side_px=256))
    converted = []
    real = video._upright_rgb
    monkeypatch.setattr(video, "_upright_rgb", lambda frame, p: converted.append(frame.width) or real(frame, p))
    assert service.caption(path).strip()
    assert converted and set(converted) == {64}


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: hostile_media.raw_h264_named_mp4(d / "raw.mp4", 100_000), "not a video container this reader opens"),
        (lambda d: hostile_media.sample_count_mp4(d / "samples.mp4", 50_000_000), "impossible sample tables"),
        (
            lambda d: hostile_media.delimiter_packets_mkv(d / "live.mkv", 80_000),
            "more video packets than this app reads",
        ),
        (lambda d: hostile_media.size_switch_mjpeg_mkv(d / "switch.mkv", 16_000), None),  # read from its small frames
    ],
    ids=["raw-h264", "sample-count", "empty-packets", "size-switch"],
)
def test_hostile_uploads_are_refused_with_a_reason_or_read_within_bounds(app, tmp_path, monkeypatch, make, expected):
    """Each file of the hostile-input suite through the app's own path (header check, then decoding) at
    the app's default size and duration limits: a clear refusal, or a caption from what can be read (the
    huge frames are never decoded)."""
    import dataclasses

    from apps.limits import AppLimits
    from apps.service import AppInputError

    _, service, _ = app
    defaults = AppLimits()
    monkeypatch.setattr(
        service,
        "limits",
        dataclasses.replace(
            service.limits, max_upload_mb=defaults.max_upload_mb, max_duration_s=defaults.max_duration_s
        ),
    )
    path = make(tmp_path)
    if expected is None:
        assert service.caption(path).strip()
    else:
        with pytest.raises(AppInputError, match=expected):
            service.caption(path)


def test_server_serves_only_uploads_and_examples(app, clips, glue_dir):
    url = app[0]
    get = lambda path: httpx.get(f"{url}gradio_api/file={path}", timeout=10)  # noqa: E731
    assert get(clips["example"].resolve()).status_code == 200
    for private in (
        REPO / "README.md",
        REPO / "apps" / "service.py",
        glue_dir / "prism_vlm_config.json",
        Path("/etc/hostname"),
        clips["a"].resolve(),
    ):
        assert get(private.resolve()).status_code == 403, private


def test_queue_refuses_requests_beyond_its_size_and_serves_the_rest(app, clips, monkeypatch, tmp_path):
    """With the model busy, at most `concurrency` requests run and `queue_size` wait; later ones are
    refused at once with "queue full", and every accepted one is answered once the model frees up."""
    import threading
    import time

    from gradio_client import Client

    url, service, _ = app
    release, running = threading.Event(), []

    def busy_caption(video, *args, **kwargs):
        running.append(video)
        release.wait(120)
        return "served"

    monkeypatch.setattr(service, "caption", busy_caption)
    client = Client(url, analytics_enabled=False, verbose=False, download_files=str(tmp_path))
    total = LIMITS["concurrency"] + LIMITS["queue_size"] + 6
    jobs = []
    for _ in range(total):
        jobs.append(client.submit(upload(clips["a"]), FRAMES, 4, api_name="/caption"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(running) < LIMITS["concurrency"] or sum(job.done() for job in jobs) < 6):
        time.sleep(0.2)
    refused_while_busy = [job for job in jobs if job.done()]
    assert len(running) == LIMITS["concurrency"]  # the model events share one concurrency limit
    release.set()
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=120))
        except Exception as error:  # noqa: BLE001 -- the client raises a plain Exception for a refused job
            outcomes.append(error)
    refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(refused) >= total - LIMITS["concurrency"] - LIMITS["queue_size"] - 1, outcomes
    assert len(refused) == len(refused_while_busy)  # refused at once, not after waiting
    assert all("queue" in str(error).lower() and "full" in str(error).lower() for error in refused), refused
    assert outcomes.count("served") == total - len(refused) >= LIMITS["queue_size"]


def test_all_model_work_runs_in_the_continuous_batchers_worker(app):
    _, service, _ = app
    assert service.run_model_work(lambda: threading.current_thread().name) == "prism-vlm-generation"
    with pytest.raises(ZeroDivisionError):  # an error in the work is the caller's, and the worker lives on
        service.run_model_work(lambda: 1 / 0)
    assert service.run_model_work(lambda: 7) == 7


def test_model_events_share_one_concurrency_limit(app):
    _, service, demo = app
    named = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("caption", "ask", "chat")}
    assert set(named) == {"caption", "ask", "chat"}
    assert {fn.concurrency_id for fn in named.values()} == {"model"}
    assert {fn.concurrency_limit for fn in named.values()} == {LIMITS["concurrency"]}


# ------------------------------------------------------------------------------------ library pieces


def test_frame_strip_is_what_the_model_sees(app, clips):
    from encoder.video.decode import load_clip

    _, service, _ = app
    strip = service.frame_strip(clips["a"], 4)
    clip = load_clip(clips["a"], num_frames=4, size=SIZE)
    assert strip.frames.shape == (4, SIZE, SIZE, 3) and strip.frames.dtype == np.uint8
    np.testing.assert_array_equal(strip.frames, np.rint(clip * 255).astype(np.uint8))
    with av.open(str(clips["a"])) as container:
        duration = float(container.streams.video[0].duration * container.streams.video[0].time_base)
    np.testing.assert_allclose(strip.times_s, (np.arange(4) + 0.5) * duration / 4)


def test_strip_image_lays_out_every_sampled_frame_with_its_time(app, clips):
    from apps.video_chat import strip_image

    _, service, _ = app
    strip = service.frame_strip(clips["a"], 5)
    image = strip_image(strip, columns=3, min_cell=100, label_height=20)
    cell = SIZE * 3  # 36 px enlarged by 3 to reach 100
    assert image.shape == (2 * (cell + 20), 3 * cell, 3)
    for index, frame in enumerate(strip.frames):
        row, column = divmod(index, 3)
        top, left = row * (cell + 20), column * cell
        np.testing.assert_array_equal(image[top : top + cell : 3, left : left + cell : 3], frame)


def test_chat_history_is_trimmed_to_the_last_turns(app):
    _, service, _ = app
    history = []
    for turn in range(service.limits.max_chat_turns + 3):
        history += [
            {"role": "user", "content": [{"type": "text", "text": f"q{turn}"}]},
            {"role": "assistant", "content": f"a{turn}"},
        ]
    messages = service.chat_prompt(history, "now?").messages
    assert len(messages) == 2 * service.limits.max_chat_turns + 1
    assert messages[0] == {"role": "user", "content": "q3"} and messages[-1] == {"role": "user", "content": "now?"}


@pytest.mark.quick
def test_chat_history_is_bounded_in_tokens_oldest_dropped_first(app, monkeypatch):
    """202 messages of 100 KB each used to reach the tokenizer and the LLM whole; now the prompt
    keeps what fits in max_history_tokens, whole exchanges, newest first, and no 100 KB turn is tokenized."""
    _, service, _ = app
    history = []
    for turn in range(101):
        history += [{"role": "user", "content": f"q{turn}"}, {"role": "assistant", "content": "word " * 20_000}]
    history += [{"role": "user", "content": "short?"}, {"role": "assistant", "content": "yes."}]
    tokenized, token_count = [], service._token_count
    monkeypatch.setattr(service, "_token_count", lambda text: tokenized.append(text) or token_count(text))
    prompt = service.chat_prompt(history, "now?")
    # the message and the turns walked back from the newest: the first 100 KB turn stops the walk untokenized
    assert sorted(tokenized) == ["now?", "short?", "yes."]
    messages = prompt.messages
    assert messages == [
        {"role": "user", "content": "short?"},
        {"role": "assistant", "content": "yes."},
        {"role": "user", "content": "now?"},
    ]
    assert prompt.dropped_turns == len(history) - 2
    total = sum(service._token_count(m["content"]) for m in messages[:-1])
    assert total <= service.limits.max_history_tokens


@pytest.mark.quick
def test_oversized_question_and_candidates_are_refused_before_model_work(app, clips, monkeypatch):
    """Refused on token counts before the clip is decoded (model work needs the clip), and the service still answers."""
    from apps.service import AppInputError

    _, service, _ = app
    decoded, load = [], service.load
    monkeypatch.setattr(service, "load", lambda *args, **kwargs: decoded.append(args) or load(*args, **kwargs))
    with pytest.raises(AppInputError, match="tokens; the limit is 256"):
        service.ask(clips["a"], "why " * 400)
    with pytest.raises(AppInputError, match="too long; the limit is 32 tokens"):
        service.ask(clips["a"], "what colour?", ["red", "blue " * 500])
    with pytest.raises(AppInputError, match="tokens; the limit is 256"):
        next(service.chat_stream(clips["a"], [], "tell me " * 200))
    assert decoded == []
    assert service.ask(clips["a"], "what colour?", ["red", "blue"]).answer in ("red", "blue")
    assert len(decoded) == 1  # the spy sees the clip an accepted request decodes


def test_model_card_names_encoder_llm_and_glue(app, glue_dir):
    from apps.video_chat import model_markdown

    _, service, _ = app
    text = model_markdown(service)
    assert str(glue_dir.parent / "encoder") in text and str(glue_dir.parent / "llm") in text and str(glue_dir) in text


@pytest.mark.quick
def test_cli_app_options_and_a_clear_error_without_a_model(tmp_path, monkeypatch, capsys):
    from vlm.cli import main as cli

    args = cli.build_parser().parse_args(
        ["app", "--model", "g", "--host", "0.0.0.0", "--port", "7999", "--share", "--queue-size", "5"]
    )
    assert (args.model, args.host, args.port, args.share, args.queue_size) == ("g", "0.0.0.0", 7999, True, 5)
    defaults = cli.build_parser().parse_args(["app"])
    assert (defaults.model, defaults.host, defaults.port, defaults.share) == (None, "127.0.0.1", 7860, False)
    monkeypatch.setenv("PRISM_VLM_MODEL", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    assert cli.main(["app", "--port", str(free_port())]) == 2
    assert "no default model is installed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        cli.main(["app", "--concurrency", "0"])
    assert refused.value.code == 2 and "--concurrency" in capsys.readouterr().err
    # Exposed without a login: a warning (then the same clear error about the model).
    assert cli.main(["app", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "--host 0.0.0.0 without --auth" in capsys.readouterr().err
    assert cli.main(["app", "--auth", "nopassword"]) == 2
    assert "expected USER:PASSWORD" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ network and uploads


@pytest.fixture
def name_lookups(monkeypatch):
    """Host names this process resolves while the test runs (the app is served in this process)."""
    looked_up = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return looked_up


def test_remote_urls_are_refused_as_files_without_a_network_call(app, client, clips, name_lookups):
    url = app[0]
    fetched = httpx.get(f"{url}gradio_api/file=https://prism-vlm-test.invalid/clip.mp4", timeout=10)
    assert fetched.status_code == 403
    body = {
        "data": [{"path": "https://prism-vlm-test.invalid/clip.mp4", "meta": {"_type": "gradio.FileData"}}, FRAMES, 4],
        "fn_index": 0,
        "session_hash": "guardtest",
        "event_data": None,
        "trigger_id": None,
    }
    joined = httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=10)
    assert joined.status_code == 400 and "uploaded files only" in joined.json()["error"]
    assert "prism-vlm-test.invalid" not in name_lookups
    assert isinstance(client.predict(upload(clips["a"]), FRAMES, 3, api_name="/caption"), str)  # still serving


def test_one_file_per_upload_and_the_size_refused_before_it_lands(app, clips):
    url = app[0]
    data = clips["a"].read_bytes()
    several = [("files", (f"c{i}.mp4", data, "video/mp4")) for i in range(3)]
    assert httpx.post(f"{url}gradio_api/upload", files=several, timeout=10).status_code == 400
    assert httpx.post(f"{url}gradio_api/upload", files=several[:1], timeout=10).status_code == 200
    huge = int(LIMITS["max_upload_mb"] * 2**20) * 4
    # Announced as huge, 16 bytes sent: refused from the headers, before the body arrives.
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port), timeout=10) as connection:
        connection.sendall(
            f"POST /gradio_api/upload HTTP/1.1\r\nHost: {address.host}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {huge}\r\n\r\n".encode()
            + b"x" * 16
        )
        assert connection.recv(64).startswith(b"HTTP/1.1 413")

    def streamed():  # no content-length: counted as it arrives
        for _ in range(8):
            yield b"--b\r\n" + b"x" * (huge // 8)

    assert (
        httpx.post(
            f"{url}gradio_api/upload",
            content=streamed(),
            timeout=30,
            headers={"content-type": "multipart/form-data; boundary=b"},
        ).status_code
        == 413
    )


def test_refused_and_abandoned_uploads_leave_nothing_once_swept(app):
    """An upload refused for its size mid-stream, and one whose client went away mid-file, each leave
    Gradio's temporary file in the upload folder; the app's sweeper (on the folder Gradio uploads to)
    deletes them once idle."""
    from gradio.utils import get_upload_folder

    from apps.uploads import sweep_abandoned_uploads

    url, _, demo = app
    folder = Path(get_upload_folder())
    assert demo.upload_sweeper.folder == folder
    before = set(folder.glob("tmp*"))
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="clip.mp4"\r\n\r\n'
    huge = int(LIMITS["max_upload_mb"] * 2**20) * 2

    def streamed():
        yield head
        for _ in range(8):
            yield b"x" * (huge // 8)

    refused = httpx.post(
        f"{url}gradio_api/upload",
        content=streamed(),
        timeout=30,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert refused.status_code == 413
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port), timeout=10) as connection:
        connection.sendall(
            f"POST /gradio_api/upload HTTP/1.1\r\nHost: {address.host}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n".encode()
            + head
            + b"x" * 50_000
        )
        time.sleep(0.5)  # the server has started the file; then the client goes away
    deadline = time.monotonic() + 10
    while len(set(folder.glob("tmp*")) - before) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    left = set(folder.glob("tmp*")) - before
    assert left, "the refused and abandoned uploads left no temporary file: nothing to sweep"
    time.sleep(0.5)
    sweep_abandoned_uploads(folder, idle_s=0.2)
    assert not (set(folder.glob("tmp*")) & left)


def test_auth_protects_the_page_and_the_api(glue_dir, clips):
    from gradio_client import Client

    from apps.limits import AppLimits
    from apps.service import ModelService
    from apps.video_chat import launch_app
    from vlm.model import load_model

    service = ModelService(load_model(glue_dir), AppLimits(**LIMITS), model_dir=glue_dir)
    demo = launch_app(
        service,
        port=free_port(),
        examples=[clips["example"]],
        prevent_thread_lock=True,
        quiet=True,
        auth=[("ada", "s3cret")],
    )
    try:
        url = demo.local_url
        assert httpx.get(f"{url}config", timeout=10).status_code == 401
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, analytics_enabled=False, verbose=False, auth=("ada", "wrong"))
        client = Client(url, analytics_enabled=False, verbose=False, auth=("ada", "s3cret"))
        assert isinstance(client.predict(upload(clips["a"]), FRAMES, 3, api_name="/caption"), str)
    finally:
        demo.close()


def test_read_auth_from_flags_and_file(tmp_path):
    from apps.cli import read_auth

    logins = tmp_path / "logins.txt"
    logins.write_text("# team\nada:s3cret\n\nbob:pa:ss\n")
    assert read_auth(["eve:x"], str(logins)) == [("eve", "x"), ("ada", "s3cret"), ("bob", "pa:ss")]
    with pytest.raises(ValueError, match="logins.txt:2"):
        logins.write_text("ok:1\nbroken\n")
        read_auth(None, str(logins))


def test_upload_folder_removed_on_sigterm_and_stale_ones_at_the_next_start(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from apps.uploads import OWNER_FILE, remove_stale_upload_dirs

    script = (
        "import sys, time; from apps.uploads import private_upload_dir; "
        "print(private_upload_dir(sys.argv[1]), flush=True); time.sleep(60)"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    folder = Path(server.stdout.readline().strip())
    (folder / "upload.mp4").write_bytes(b"x")
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    assert not folder.exists()

    killed = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    stale = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait(timeout=30)
    assert stale.exists()  # SIGKILL: nothing could clean up
    foreign = tmp_path / "prism-vlm-app-foreign"
    foreign.mkdir()  # no owner file: not ours to delete
    alive = tmp_path / "prism-vlm-app-alive"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(f"{os.getppid()}\n")
    time.sleep(0.1)
    assert remove_stale_upload_dirs(tmp_path) == [stale]
    assert not stale.exists() and foreign.exists() and alive.exists()


def test_page_messages_never_show_server_paths():
    from apps.video_chat import readable_error
    from vlm.processing import UnreadableVideoError

    message = readable_error(UnreadableVideoError("cannot decode video '/tmp/gradio/4f2a/clip.mp4': no video stream"))
    assert "/tmp" not in message and "'clip.mp4'" in message
    assert "/home" not in readable_error(RuntimeError("/home/ada/models/glue/resampler.safetensors is gone"))


@pytest.mark.quick
def test_user_errors_show_in_one_line_and_bugs_keep_their_traceback_in_the_log(caplog):
    """The page shows a PrismVlmError's own message and logs nothing; any other exception is a bug: the
    page gets a generic line and the server log its traceback."""
    import logging

    from apps.video_chat import _to_gradio_error
    from encoder.common.errors import PrismVlmError

    with caplog.at_level(logging.ERROR):
        shown = _to_gradio_error(PrismVlmError("the glue directory has no resampler weights"))
    assert shown.message == "the glue directory has no resampler weights" and not caplog.records
    with caplog.at_level(logging.ERROR):
        try:
            raise ValueError("an index out of range inside the model")
        except ValueError as error:
            shown = _to_gradio_error(error)
    assert "an index out of range" not in shown.message and "ValueError" in shown.message
    assert len(caplog.records) == 1 and caplog.records[0].exc_info[0] is ValueError


def test_concurrent_captions_and_open_answers_are_batched_and_equal_unbatched(app, clips):
    """Requests that arrive together are generated together (continuous batching), greedy ones and
    those with a repetition penalty alike; each answer equals the one it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from vlm.inference.generation import GenerationSettings

    _, service, _ = app
    videos = [clips["a"], clips["b"], clips["c"], clips["a"]]
    alone_captions = [service.caption(v, FRAMES, 6) for v in videos]
    alone_answers = [service.ask(v, "what is it?", None, FRAMES, 5).answer for v in videos]
    steps = len(service._generator.step_sizes)
    with ThreadPoolExecutor(len(videos)) as pool:
        captions = list(pool.map(lambda v: service.caption(v, FRAMES, 6), videos))
        answers = list(pool.map(lambda v: service.ask(v, "what is it?", None, FRAMES, 5).answer, videos))
    assert captions == alone_captions and answers == alone_answers
    assert max(list(service._generator.step_sizes)[steps:]) > 1

    penalised = GenerationSettings(repetition_penalty=1.3)
    alone_penalised = [service.caption(v, FRAMES, 6, penalised) for v in videos]
    steps = len(service._generator.step_sizes)
    with ThreadPoolExecutor(len(videos)) as pool:
        assert list(pool.map(lambda v: service.caption(v, FRAMES, 6, penalised), videos)) == alone_penalised
    assert max(list(service._generator.step_sizes)[steps:]) > 1


def test_sampled_requests_share_the_batch_and_keep_their_seeds(app, clips):
    """A sampled chat reply runs in the continuous batch beside greedy captions (no collecting batcher, no
    second generate thread): the same seed gives the same reply alone and beside them, and the greedy
    captions equal theirs alone."""
    from concurrent.futures import ThreadPoolExecutor

    from vlm.inference.generation import GenerationSettings

    _, service, _ = app
    sampled = GenerationSettings(do_sample=True, temperature=1.2, top_p=0.9, seed=11)
    reply_alone = "".join(service.chat_stream(clips["a"], [], "Describe it.", FRAMES, 12, sampled))
    other_seed = "".join(service.chat_stream(clips["a"], [], "Describe it.", FRAMES, 12, sampled.replace(seed=12)))
    assert reply_alone != other_seed
    videos = [clips["b"], clips["c"], clips["a"]]
    captions_alone = [service.caption(v, FRAMES, 6) for v in videos]
    threads_seen: set[str] = set()

    def reply() -> str:
        pieces = []
        for piece in service.chat_stream(clips["a"], [], "Describe it.", FRAMES, 12, sampled):
            threads_seen.update(thread.name for thread in threading.enumerate())  # while it streams
            pieces.append(piece)
        return "".join(pieces)

    steps = len(service._generator.step_sizes)
    with ThreadPoolExecutor(4) as pool:
        replied = pool.submit(reply)
        captions = list(pool.map(lambda v: service.caption(v, FRAMES, 6), videos))
        assert replied.result(timeout=120) == reply_alone
    assert captions == captions_alone
    assert max(list(service._generator.step_sizes)[steps:]) > 1
    assert threads_seen and "prism-vlm-generate" not in threads_seen  # no generate() thread beside the worker


def test_an_llm_that_cannot_batch_runs_each_request_alone_in_one_model_thread(app, clips, monkeypatch):
    """Without continuous batching (an LLM whose cache rows cannot join and leave), every request runs
    alone through generate() in one model thread, with the same answers; beam search does everywhere."""
    import apps.service as service_module
    from apps.service import ModelService
    from vlm.inference.generation import GenerationSettings

    _, service, _ = app
    monkeypatch.setattr(service_module, "supports_continuous_batching", lambda llm: False)
    solo = ModelService(service.model, service.limits)
    try:
        assert solo._generator is None
        assert solo.caption(clips["a"], FRAMES, 6) == service.caption(clips["a"], FRAMES, 6)
        chat = lambda s: "".join(s.chat_stream(clips["b"], [], "What is it?", FRAMES, 8))  # noqa: E731
        assert chat(solo) == chat(service)
        assert solo.run_model_work(lambda: threading.current_thread().name).startswith("prism-vlm-model")
        beams = GenerationSettings(num_beams=2)
        assert solo.caption(clips["a"], FRAMES, 6, beams) == service.caption(clips["a"], FRAMES, 6, beams)
    finally:
        solo.close()


def test_a_caption_does_not_wait_for_a_long_chat_reply(app, clips):
    """A caption asked while a long chat reply streams joins the running batch and is answered before
    the reply ends (no head-of-line blocking); both equal their answers alone."""
    from apps.limits import AppLimits
    from apps.service import ModelService

    service = ModelService(app[1].model, AppLimits(**{**LIMITS, "max_new_tokens": 256}))
    try:
        caption_alone = service.caption(clips["b"], FRAMES, 4)
        reply_alone = "".join(service.chat_stream(clips["a"], [], "Tell me everything.", FRAMES, 256))
        assert len(service.model.tokenizer(reply_alone)["input_ids"]) > 100  # a long reply (the tiny LLM rarely stops)
        events, pieces = [], []

        def chat():
            for piece in service.chat_stream(clips["a"], [], "Tell me everything.", FRAMES, 256):
                if not pieces:
                    events.append("chat started")
                pieces.append(piece)
            events.append("chat ended")

        chatting = threading.Thread(target=chat)
        chatting.start()
        while not pieces and chatting.is_alive():
            time.sleep(0.001)
        caption = service.caption(clips["b"], FRAMES, 4)
        events.append("caption")
        chatting.join(timeout=120)
    finally:
        service.close()
    assert events == ["chat started", "caption", "chat ended"]
    assert 2 in service._generator.step_sizes  # the caption's rows ran beside the reply's
    assert caption == caption_alone and "".join(pieces) == reply_alone


def test_a_bad_request_among_batched_ones_fails_alone(app, clips, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from apps.service import AppInputError

    _, service, _ = app
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    expected = service.caption(clips["a"], FRAMES, 6)
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(service.caption, video, FRAMES, 6) for video in (clips["a"], bad, clips["a"], clips["a"])
        ]
    assert [futures[i].result() for i in (0, 2, 3)] == [expected] * 3
    with pytest.raises(AppInputError):
        futures[1].result()


def test_concurrent_chat_replies_are_batched_streamed_and_equal_unbatched(app, clips):
    """Chat replies of requests that arrive together are generated as one batch, each streamed to its
    own client piece by piece, and each equals the reply it gets alone; a client that leaves early
    does not hold the others up."""
    from concurrent.futures import ThreadPoolExecutor

    _, service, _ = app
    chats = [
        (clips["a"], [], "What happens in the video?"),
        (clips["b"], [], "What colour is it?"),
        (clips["c"], [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "And now?"),
        (clips["a"], [], "Describe it."),
    ]

    def reply(chat) -> list[str]:
        video, history, message = chat
        return list(service.chat_stream(video, history, message, FRAMES, 8))

    alone = [reply(chat) for chat in chats]
    before = len(service._generator.step_sizes)
    with ThreadPoolExecutor(len(chats)) as pool:
        together = list(pool.map(reply, chats))
    assert ["".join(p) for p in together] == ["".join(p) for p in alone]
    assert max(len(p) for p in together) > 1  # streamed in pieces, not as one block
    assert max(list(service._generator.step_sizes)[before:]) > 1

    def leave_after_first_piece(chat) -> str:
        stream = service.chat_stream(*chat[:1], chat[1], chat[2], FRAMES, 8)
        first = next(stream)
        stream.close()
        return first

    with ThreadPoolExecutor(2) as pool:
        left = pool.submit(leave_after_first_piece, chats[0])
        stayed = pool.submit(reply, chats[1])
        assert left.result(timeout=60) == alone[0][0] and stayed.result(timeout=60) == alone[1]


def test_generation_settings_reach_the_model_through_the_api(app, client, clips):
    """Temperature 0 (the default) is greedy; a temperature above 0 samples; the settings are the
    library's GenerationSettings (a batch only holds requests with the same settings)."""
    from gradio_client.exceptions import AppError

    from vlm.inference.generation import GenerationSettings

    _, service, _ = app
    greedy = client.predict(upload(clips["a"]), FRAMES, 6, api_name="/caption")
    assert client.predict(upload(clips["a"]), FRAMES, 6, 0, 1, 1, api_name="/caption") == greedy
    clip = library_clip(service, clips["a"])
    assert greedy == VideoAssistant(service.model).caption(clips=clip, max_new_tokens=6)[0]
    hot = GenerationSettings(do_sample=True, temperature=2.0, top_p=1.0, max_new_tokens=6)
    sampled = {service.caption(clips["a"], FRAMES, 6, hot.replace(seed=seed)) for seed in range(4)}
    assert len(sampled) > 1  # sampling at temperature 2 varies with the seed
    assert service.caption(clips["a"], FRAMES, 6, hot.replace(seed=1)) == service.caption(
        clips["a"], FRAMES, 6, hot.replace(seed=1)
    )
    with pytest.raises(AppError, match="maximum|Generation settings"):
        client.predict(upload(clips["a"]), FRAMES, 6, 5.0, 1, 1, api_name="/caption")
