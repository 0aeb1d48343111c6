"""The app on a long upload (longer than one window, :mod:`apps.long_video`): /timeline and /find equal the
library's (every model computation in the model thread), a chat reply names the times it was read from, the
windows limit refuses clearly, and a real browser shows the timeline, a moment's frames and the moments found.

A tiny random glue (tests.helpers.tiny_glue) and the shipped demo video-text model read a generated video of
moving-shapes clips (about 20 s, windows of 4 s).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from apps.limits import AppLimits
from tests.helpers.app_server import chromium_browser, free_port
from tests.helpers.app_server import served_app as served_app_in_subprocess
from tests.helpers.tiny_glue import FRAMES
from vlm.inference.assistant import VideoAssistant
from vlm.long_video.cache import WindowCache
from vlm.long_video.moments import find_moments
from vlm.long_video.reading import read_long_video
from vlm.long_video.timeline import make_timeline
from vlm.shapes import ShapesConfig, make_long_videos, make_shapes_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
DEMO_VIDEO_TEXT = REPO / "vlm" / "demo_model" / "video_text"
WINDOW_S = 4.0
LIMITS = AppLimits(max_duration_s=60.0, max_new_tokens=16, max_windows=10, concurrency=2)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """A ~20 s video of moving-shapes clips (5 windows of 4 s)."""
    root = tmp_path_factory.mktemp("long_video")
    corpus = make_shapes_corpus(
        root / "corpus", 40, seed=5, config=ShapesConfig(test_fraction=0.5, compositional_fraction=0.0), progress=False
    )
    return make_long_videos(corpus, "test", root / "videos", count=1, duration_s=20.3, seed=2)[0]


@pytest.fixture(scope="module")
def video_text():
    from vlm.retrieval.video_text_model import load_video_text_model

    return load_video_text_model(str(DEMO_VIDEO_TEXT), device="cpu")


@pytest.fixture(scope="module")
def app(glue_dir, video_text, tmp_path_factory):
    """(url, service, long-video service) of the app served in this process, with the video-text model."""
    from apps.long_video import LongVideoService
    from apps.search import SearchService
    from apps.service import ModelService
    from apps.video_chat import launch_app
    from vlm.model import load_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("uploads")))
        service = ModelService(load_model(glue_dir), LIMITS, model_dir=glue_dir)
        search = SearchService(video_text, None, LIMITS, run_model_work=service.run_model_work)
        long_videos = LongVideoService(
            service, video_text, window_s=WINDOW_S, cache=WindowCache(tmp_path_factory.mktemp("windows"))
        )
        demo = launch_app(
            service,
            port=free_port(),
            examples=[],
            prevent_thread_lock=True,
            quiet=True,
            search=search,
            long_videos=long_videos,
        )
        try:
            yield demo.local_url, service, long_videos
        finally:
            demo.close()
            service.close()


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    return Client(app[0], analytics_enabled=False, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def upload(path: Path):
    from gradio_client import handle_file

    return handle_file(str(path))


def _threads_of(monkeypatch, obj, name) -> list[str]:
    """Record the thread each call of ``obj.name`` runs in."""
    threads, original = [], getattr(obj, name)

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, recorded)
    return threads


def test_timeline_and_find_equal_the_library_and_run_in_the_model_thread(
    app, client, long_video, video_text, tmp_path, monkeypatch
):
    _, service, long_videos = app
    glue_threads = _threads_of(monkeypatch, service.model, "get_video_features")
    text_threads = _threads_of(monkeypatch, video_text, "embed_clips")
    caption_threads = _threads_of(monkeypatch, service.assistant, "caption")
    seen = []
    segments = long_videos.timeline(long_video, progress=lambda done, total, what: seen.append((what, done, total)))
    assert glue_threads and set(glue_threads + caption_threads) == {"prism-vlm-generation"}
    assert seen[-1] == ("captioning windows", 5, 5) and ("reading windows", 5, 5) in seen

    library_video = read_long_video(long_video, model=service.model, window_s=WINDOW_S, cache=WindowCache(tmp_path))
    expected = make_timeline(VideoAssistant(service.model), library_video, max_new_tokens=LIMITS.max_new_tokens)
    assert segments == expected and segments[0].start == 0.0 and segments[-1].end == library_video.duration
    shown = client.predict(upload(long_video), api_name="/timeline")
    assert shown == [segment.to_dict() for segment in expected]

    moments = long_videos.find(long_video, "a red shape", 3)
    assert text_threads and set(text_threads) == {"prism-vlm-generation"}
    library_video = read_long_video(
        long_video, video_text_model=video_text, window_s=WINDOW_S, cache=WindowCache(tmp_path)
    )
    library = find_moments(video_text, library_video, "a red shape", top_k=3)
    assert [(m.start, m.end) for m in moments] == [(m.start, m.end) for m in library]
    assert [m.score for m in moments] == pytest.approx([m.score for m in library], abs=1e-5)
    found = client.predict(upload(long_video), "a red shape", 3, api_name="/find")
    assert [(m["start"], m["end"]) for m in found] == [(m.to_dict()["start"], m.to_dict()["end"]) for m in library]


def test_a_chat_about_a_long_upload_names_the_times(app, client, long_video):
    history, cleared = client.predict(
        upload(long_video), "What colour is the object at 0:09?", [], FRAMES, 8, api_name="/chat"
    )
    from apps.service import chat_text

    assert cleared == "" and [turn["role"] for turn in history] == ["user", "assistant"]
    assert chat_text(history[-1]["content"]).startswith("At 0:08-0:10: ")
    when, _ = client.predict(upload(long_video), "When does the red object appear?", [], FRAMES, 8, api_name="/chat")
    assert chat_text(when[-1]["content"]).startswith("At ")


def test_the_windows_limit_and_a_missing_video_text_model_refuse_clearly(app, client, long_video):
    from gradio_client.exceptions import AppError

    from apps.long_video import LongVideoService
    from apps.service import AppInputError

    _, service, long_videos = app
    limited = LongVideoService(
        service,
        long_videos.video_text_model,
        window_s=WINDOW_S,
        cache=long_videos.cache,
        limits=AppLimits(max_duration_s=60.0, max_windows=4),
    )
    with pytest.raises(AppInputError, match=r"'long-000.mp4' has 5 windows of 4 s; this app reads at most 4 windows"):
        limited.timeline(long_video)
    without = LongVideoService(service, None, window_s=WINDOW_S, cache=long_videos.cache)
    with pytest.raises(AppInputError, match="without a video-text model"):
        without.find(long_video, "a red shape")
    assert len(without.timeline(long_video)) >= 1  # the timeline needs only the glue
    with pytest.raises(AppError, match="The text to find is empty"):
        client.predict(upload(long_video), "  ", 3, api_name="/find")


# ------------------------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def served_app(glue_dir, tmp_path_factory):
    """URL of ``prism-vlm app --model glue_dir --window 4`` (the demo video-text model) in a subprocess."""
    root = tmp_path_factory.mktemp("app")
    arguments = ["--model", str(glue_dir), "--video-text-model", str(DEMO_VIDEO_TEXT), "--window", str(WINDOW_S)]
    arguments += ["--max-duration", "60"]
    with served_app_in_subprocess(arguments, root, {"PRISM_VLM_CACHE": str(root / "windows")}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


@pytest.mark.browser
@pytest.mark.slow
def test_a_long_upload_shows_its_timeline_a_moments_frames_and_what_find_finds(served_app, browser, long_video):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(served_app, wait_until="load")
    page.locator("#video-upload").wait_for(timeout=30_000)
    page.locator("#video-upload input[type=file]").set_input_files(str(long_video))
    page.wait_for_function(
        "document.querySelector('#long-video-facts')?.innerText.includes('5 windows of 4 s')", timeout=60_000
    )

    page.locator("#timeline-button").click()
    page.wait_for_function("document.querySelector('#timeline-table')?.innerText.includes('0:00-0:0')", timeout=60_000)
    table = page.locator("#timeline-table").inner_text()
    assert "0:00-0:0" in table and "0:20" in table, table

    page.locator("#timeline-table [data-testid=cell-1-0]").click()  # the second window's row: its frames
    page.wait_for_function("(document.querySelector('#moment-strip img') || {}).naturalWidth > 0", timeout=60_000)
    assert f"0:04-0:08: the {FRAMES} frames the model sees" in page.locator("#moment-facts").inner_text()

    page.locator("#find-text textarea").fill("a red shape")
    page.locator("#find-button").click()
    page.wait_for_function(
        "/\\d:\\d\\d-\\d:\\d\\d/.test(document.querySelector('#find-results')?.innerText)", timeout=60_000
    )
    assert "0." in page.locator("#find-results").inner_text()  # the scores
    assert page.locator(".toast-body.error").count() == 0
    page.close()
