"""The app in a real browser: ``prism-vlm app --model DIR`` started as a user starts it, then
Debian's chromium (headless, through Playwright) uploads the official VideoPrism demo clip, waits for the strip
of sampled frames, clicks Describe, reads the description that appears and saves a screenshot.

Chromium is required, not optional: ``.ci/run`` installs it (``apt-get install chromium``), so a
missing browser fails this test with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from tests.helpers.app_server import chromium_browser
from tests.helpers.app_server import served_app as served_app_in_subprocess
from tests.helpers.fixture_files import REAL_CLIP, REFERENCE_DIR, TEST_SPM_MODEL
from tests.helpers.tiny_glue import FRAMES, SIZE
from vlm.inference.assistant import VideoAssistant

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHARED_CLIP = REAL_CLIP
LVT_NPZ = REFERENCE_DIR / "lvt_tiny_params.npz"
UI_MAX_NEW_TOKENS = 32  # the page's default "Max new tokens"


@pytest.fixture(scope="module")
def search_folder(tmp_path_factory) -> Path:
    """The shipped shapes example clips, as the folder the Search tab searches."""
    folder = tmp_path_factory.mktemp("search")
    for clip in sorted((REPO / "apps" / "examples").glob("*.mp4")):
        shutil.copy(clip, folder / clip.name)
    return folder


@pytest.fixture(scope="module")
def search_index(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search-index")


@pytest.fixture(scope="module")
def served_app(glue_dir, search_folder, search_index, tmp_path_factory):
    """URL of ``prism-vlm app --model glue_dir --search-dir search_folder`` running in a subprocess
    (the video-text model: the official-format tiny LvT fixture)."""
    arguments = ["--model", str(glue_dir), "--search-dir", str(search_folder), "--search-index", str(search_index)]
    arguments += ["--video-text-model", str(LVT_NPZ), "--video-text-tokenizer", str(TEST_SPM_MODEL)]
    with served_app_in_subprocess(arguments, tmp_path_factory.mktemp("app")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


def test_upload_the_shared_clip_describe_it_and_take_a_screenshot(served_app, browser, glue_dir, tmp_path):
    from vlm.model import load_model

    if not SHARED_CLIP.is_file():
        pytest.fail(f"the demo clip is missing: {SHARED_CLIP}")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    outside = []
    page.on(
        "request",
        lambda request: (
            outside.append(request.url)
            if urlparse(request.url).hostname not in ("127.0.0.1", "localhost")
            and not request.url.startswith(("data:", "blob:"))
            else None
        ),
    )
    page.goto(served_app, wait_until="load")
    page.locator("#video-upload").wait_for(timeout=30_000)

    page.locator("#video-upload input[type=file]").set_input_files(str(SHARED_CLIP))
    page.wait_for_function("(document.querySelector('#frame-strip img') || {}).naturalWidth > 0", timeout=60_000)
    cell = SIZE * -(-128 // SIZE)  # tiny frames are enlarged to at least 128 px
    width = page.evaluate("document.querySelector('#frame-strip img').naturalWidth")
    assert width == FRAMES * cell, "the strip shows the model's frames side by side"
    assert "8.3 s, 512 x 512 px" in page.locator("#clip-facts").inner_text()

    page.locator("#describe-button").click()
    caption_box = page.locator("#caption textarea")
    page.wait_for_function("document.querySelector('#caption textarea').value.trim().length > 0", timeout=60_000)
    shown = caption_box.input_value()

    model = load_model(glue_dir)
    expected = VideoAssistant(model).caption_videos([SHARED_CLIP], max_new_tokens=UI_MAX_NEW_TOKENS)[0]
    assert shown == expected

    screenshot = tmp_path / "app_describe.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("PRISM_VLM_SCREENSHOT_DIR"):  # keep a copy (e.g. for docs/)
        shutil.copy(screenshot, Path(os.environ["PRISM_VLM_SCREENSHOT_DIR"]) / screenshot.name)
    assert outside == [], f"the page fetched from outside the server: {outside[:5]}"
    page.close()


def test_a_bad_upload_shows_a_message_in_the_page_then_an_example_works(served_app, browser, tmp_path):
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    page = browser.new_page()
    page.goto(served_app, wait_until="load")
    page.locator("#video-upload").wait_for(timeout=30_000)
    page.locator("#video-upload input[type=file]").set_input_files(str(garbage))
    page.wait_for_function(
        "document.querySelector('#clip-facts').innerText.includes('Cannot use this clip')", timeout=60_000
    )
    assert "broken.mp4" in page.locator("#clip-facts").inner_text()
    assert page.locator("#frame-strip img").count() == 0
    assert page.locator(".toast-body.error").count() == 0
    page.locator("#describe-button").click()  # the session is still alive: Describe answers with an error toast
    error_toast = page.locator(".toast-body.error [data-testid=toast-text]").first
    error_toast.wait_for(timeout=30_000)
    assert "'broken.mp4' is not a video this app can read" in error_toast.inner_text()

    page.get_by_text("green star rotating").first.click()  # a shipped shapes example
    page.wait_for_function(
        "document.querySelector('#clip-facts').innerText.includes('green_star_rotating.mp4')", timeout=60_000
    )
    assert "2.0 s, 64 x 64 px" in page.locator("#clip-facts").inner_text()
    page.wait_for_function("(document.querySelector('#frame-strip img') || {}).naturalWidth > 0", timeout=60_000)
    page.close()


def test_search_tab_finds_clips_of_the_folder_and_plays_them(served_app, browser, search_folder, search_index):
    from vlm.retrieval.index import VideoIndex
    from vlm.retrieval.video_text_model import load_video_text_model

    clips = sorted(search_folder.glob("*.mp4"))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(served_app, wait_until="load")
    page.get_by_role("tab", name="Search").click()
    assert f"Search the {len(clips)} clips" in page.locator("#search-info").inner_text(timeout=30_000)
    page.locator("#search-query textarea").fill("a green star rotating")
    page.locator("#search-button").click()
    page.wait_for_function(
        "document.querySelectorAll('#search-results video, #search-results img').length > 0", timeout=60_000
    )
    shown = page.locator("#search-results").inner_text()
    # the library's ranking with the same model and the index the app built
    index = VideoIndex.load(search_index)
    model = load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL)
    _, rows = index.search(model.embed_texts(["a green star rotating"]), len(clips))
    best = Path(index.videos[int(rows[0][0])]).name
    assert best in shown and all(clip.name in shown for clip in clips)
    page.locator("#search-results video, #search-results img").first.click()  # opens the clip in the preview
    page.wait_for_function("document.querySelectorAll('#search-results video').length > 0", timeout=30_000)
    assert page.locator("#search-results video").first.get_attribute("src")
    page.close()
