"""``prism-vlm serve``'s OpenAI-compatible API (apps.openai_server), driven by the official ``openai``
client against a server running on a free port: plain and streamed replies, a base64 video, file URLs
inside and outside the allowed folder, image frames, candidates, keys, limits and a full queue."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.app_server import LIMITS, free_port
from tests.helpers.tiny_glue import FRAMES, write_clip

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEY = "test-key-123"


def _data_url(path: Path, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _png_url(value: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _video_message(url: str, text: str = "What is in the video?", kind: str = "video_url") -> list[dict]:
    return [{"role": "user", "content": [{"type": kind, kind: {"url": url}}, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    allowed = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    return {
        "allowed": allowed,
        "clip": write_clip(allowed / "a.mp4", seed=0),
        "other": write_clip(allowed / "b.mp4", seed=1),
        "outside": write_clip(outside / "c.mp4", seed=2),
    }


def _serve(service, config):
    """Serve the API with uvicorn in a thread. -> (base URL, server)."""
    import uvicorn

    from apps.openai_server import build_openai_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_openai_app(service, config), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    return f"http://127.0.0.1:{port}/v1", server


@pytest.fixture(scope="module")
def served(glue_dir, media):
    """(client, service, base URL) of a server with an API key and an allowed media folder."""
    from apps.limits import AppLimits
    from apps.openai_server import ServerConfig
    from apps.service import ModelService
    from vlm.model import load_model

    service = ModelService(load_model(glue_dir), AppLimits(**LIMITS), model_dir=glue_dir)
    url, server = _serve(service, ServerConfig(api_keys=(KEY,), allowed_local_media_path=media["allowed"]))
    try:
        yield openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120), service, url
    finally:
        server.should_exit = True
        service.close()


def test_models_and_a_plain_reply_equal_to_the_service(served, media):
    client, service, _ = served
    assert [model.id for model in client.models.list().data] == ["prism-vlm"]
    reply = client.chat.completions.create(
        model="prism-vlm", messages=_video_message(_data_url(media["clip"])), max_tokens=8, temperature=0
    )
    expected = "".join(service.chat_stream(media["clip"], [], "What is in the video?", None, 8))
    assert reply.choices[0].message.content == expected and expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_streamed_reply_equals_the_whole_one(served, media):
    client, _, _ = served
    messages = _video_message(_data_url(media["clip"]))
    whole = client.chat.completions.create(model="prism-vlm", messages=messages, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="prism-vlm",
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_file_urls_only_inside_the_allowed_folder(served, media):
    client, _, _ = served
    inside = client.chat.completions.create(
        model="prism-vlm", messages=_video_message(media["clip"].resolve().as_uri()), max_tokens=6, temperature=0
    )
    by_data = client.chat.completions.create(
        model="prism-vlm", messages=_video_message(_data_url(media["clip"])), max_tokens=6, temperature=0
    )
    assert inside.choices[0].message.content == by_data.choices[0].message.content
    for url in (
        media["outside"].resolve().as_uri(),
        (media["allowed"] / ".." / media["outside"].parent.name / "c.mp4").as_uri(),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="prism-vlm", messages=_video_message(url), max_tokens=4)
        assert "allowed folder" in str(refused.value) and str(media["outside"].parent) not in str(refused.value)
    with pytest.raises(openai.BadRequestError, match="remote media is off"):
        client.chat.completions.create(
            model="prism-vlm", messages=_video_message("https://example.invalid/x.mp4"), max_tokens=4
        )


def test_image_parts_are_the_frames_of_one_clip(served):
    client, service, _ = served
    values = [20 * i for i in range(FRAMES)]
    content = [{"type": "image_url", "image_url": {"url": _png_url(v)}} for v in values]
    reply = client.chat.completions.create(
        model="prism-vlm",
        messages=[{"role": "user", "content": content + [{"type": "text", "text": "Describe it."}]}],
        max_tokens=6,
        temperature=0,
    )
    from encoder.video.decode import load_clip

    clip = load_clip([np.full((40, 40, 3), v, np.uint8) for v in values], FRAMES, service.frame_size)
    expected = "".join(service.chat_stream(clip, [], "Describe it.", FRAMES, 6))
    assert reply.choices[0].message.content == expected
    with pytest.raises(openai.BadRequestError, match="one video per conversation"):
        client.chat.completions.create(
            model="prism-vlm",
            messages=[
                {"role": "user", "content": content[:1] + [{"type": "video_url", "video_url": {"url": _png_url(1)}}]}
            ],
        )


def test_candidates_are_ranked_with_exact_probabilities(served, media):
    client, service, _ = served
    candidates = ["red", "blue", "a green circle"]
    reply = client.chat.completions.create(
        model="prism-vlm",
        messages=_video_message(_data_url(media["clip"]), "What colour is it?"),
        extra_body={"candidates": candidates},
    )
    ranked = reply.model_extra["candidates"]
    expected = service.ask(media["clip"], "What colour is it?", candidates).probabilities()
    assert [r["answer"] for r in ranked] == [e["answer"] for e in expected]
    assert [r["log_likelihood"] for r in ranked] == pytest.approx([e["log_likelihood"] for e in expected], abs=1e-5)
    assert reply.choices[0].message.content == ranked[0]["answer"]
    assert sum(r["probability"] for r in ranked) == pytest.approx(1.0)


def test_sampling_seed_stop_and_logprobs(served, media):
    client, _, _ = served
    messages = _video_message(_data_url(media["clip"]))
    ask = lambda **kw: client.chat.completions.create(model="prism-vlm", messages=messages, max_tokens=12, **kw)  # noqa: E731
    first, again, other = ask(temperature=1.3, seed=5), ask(temperature=1.3, seed=5), ask(temperature=1.3, seed=6)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    greedy = ask(temperature=0, logprobs=True, top_logprobs=3)
    entries = greedy.choices[0].logprobs.content
    assert len(entries) == greedy.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    assert all(e.logprob == pytest.approx(e.top_logprobs[0].logprob) for e in entries)  # greedy: the top token
    text = greedy.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = ask(temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_errors_are_openai_error_objects(served, media, glue_dir):
    client, _, url = served
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=_video_message(_data_url(media["clip"])))
    with pytest.raises(openai.BadRequestError, match="send a video"):
        client.chat.completions.create(model="prism-vlm", messages=[{"role": "user", "content": "hi"}])
    huge = "data:video/mp4;base64," + "A" * int(LIMITS["max_upload_mb"] * 2**20 * 2)
    response = httpx.post(
        f"{url}/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "prism-vlm", "messages": _video_message(huge)},
        timeout=60,
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == 413
    bad = httpx.post(
        f"{url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, content=b"{not json", timeout=30
    )
    assert bad.status_code == 422 and "error" in bad.json()
    broken = client.chat.completions.with_raw_response  # a corrupt video: a 400 naming the problem, no path
    with pytest.raises(openai.BadRequestError) as refused:
        broken.create(
            model="prism-vlm",
            messages=_video_message("data:video/mp4;base64," + base64.b64encode(b"junk" * 50).decode()),
        )
    assert "Traceback" not in str(refused.value) and "/tmp" not in str(refused.value)


def test_a_full_queue_is_429_and_a_closed_service_503(glue_dir, media):
    from apps.limits import AppLimits
    from apps.openai_server import ServerConfig
    from apps.service import ModelService
    from vlm.model import load_model

    service = ModelService(
        load_model(glue_dir), AppLimits(**{**LIMITS, "concurrency": 1, "queue_size": 1}), model_dir=glue_dir
    )
    url, server = _serve(service, ServerConfig())
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
    messages = _video_message(_data_url(media["clip"]))
    gate = threading.Event()
    blocker = threading.Thread(target=lambda: service.run_model_work(gate.wait))  # holds the model's worker
    ask = lambda: client.chat.completions.create(model="prism-vlm", messages=messages, max_tokens=2)  # noqa: E731
    try:
        blocker.start()
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(ask)
            time.sleep(0.5)  # the first request holds the one processing slot (waiting on the worker)
            queued = pool.submit(ask)
            time.sleep(0.5)  # the second waits in the queue of one
            with pytest.raises(openai.RateLimitError, match="queue is full"):
                ask()
            gate.set()
            assert running.result(timeout=120).choices[0].message.content is not None
            assert queued.result(timeout=120).choices[0].message.content is not None
        ask()  # room again
        service.close()  # the model's worker stops: the server answers 503 from then on
        with pytest.raises(openai.InternalServerError) as closed:
            ask()
        assert closed.value.status_code == 503 and "shutting down" in str(closed.value)
    finally:
        gate.set()
        server.should_exit = True
        service.close()


def test_the_gradio_app_mounts_the_same_api_on_its_model(glue_dir, media, tmp_path, monkeypatch):
    """``prism-vlm app --openai-api``: /v1 in the app's process answers as the app does (one model, one
    batcher), with its own key; the page's routes are guarded as before."""
    from apps.limits import AppLimits
    from apps.openai_server import ServerConfig
    from apps.service import ModelService
    from apps.video_chat import launch_app
    from vlm.model import load_model

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    service = ModelService(load_model(glue_dir), AppLimits(**LIMITS), model_dir=glue_dir)
    demo = launch_app(
        service,
        port=free_port(),
        examples=[],
        prevent_thread_lock=True,
        quiet=True,
        openai_api=ServerConfig(api_keys=(KEY,)),
    )
    try:
        client = openai.OpenAI(base_url=f"{demo.local_url}v1", api_key=KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="prism-vlm", messages=_video_message(_data_url(media["clip"])), max_tokens=6, temperature=0
        )
        assert reply.choices[0].message.content == "".join(
            service.chat_stream(media["clip"], [], "What is in the video?", None, 6)
        )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{demo.local_url}v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.post(f"{demo.local_url}gradio_api/process_recording", timeout=10).status_code == 404
    finally:
        demo.close()
        service.close()


@pytest.mark.quick
def test_only_the_image_frames_a_clip_keeps_are_decoded_and_shrunk_at_once(tmp_path, monkeypatch):
    """200 image parts for an 8-frame clip: 8 images decoded, each shrunk to the frame size right away."""
    from types import SimpleNamespace

    from apps.limits import AppLimits
    from apps.openai_server import MediaReader, ServerConfig

    service = SimpleNamespace(frame_size=16, limits=AppLimits())
    reader = MediaReader(service, ServerConfig(), tmp_path)
    decoded = []
    real = MediaReader.image

    def counting(self, url):
        image = real(self, url)
        decoded.append(image.shape)
        return image

    monkeypatch.setattr(MediaReader, "image", counting)
    urls = [_png_url(i) for i in range(200)]
    clip = reader.frames(urls, 8)
    assert clip.shape == (8, 16, 16, 3) and len(decoded) == 8
    assert [round(float(frame.mean()) * 255) for frame in clip] == [12 + 25 * i for i in range(8)]  # images 12, 37, ...
