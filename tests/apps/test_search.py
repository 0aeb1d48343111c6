"""The app's video-text side, served on localhost and driven with gradio_client: /search over the
folder given at start (results equal the library's ranking, the clips are served), /labels
(zero-shot probabilities equal the library's), readable errors; and the app's flags for it.

The video-text model is the official-format tiny LvT checkpoint of tests/fixtures (random weights):
these tests check the plumbing, not the quality of the answers.
"""

from __future__ import annotations

import shutil
import threading

import httpx
import numpy as np
import pytest
import torch

from tests.helpers.app_server import LIMITS, free_port
from tests.helpers.fixture_files import REFERENCE_DIR, TEST_SPM_MODEL
from tests.helpers.tiny_glue import build_tiny_glue, save_tiny_glue
from tests.helpers.video_factory import write_video

LVT_NPZ = REFERENCE_DIR / "lvt_tiny_params.npz"


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "sub").mkdir()
    for number, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 50, 220)]):
        frames = []
        for t in range(4):
            frame = np.full((72, 72, 3), 20, np.uint8)
            frame[16:48, 6 + 5 * t : 38 + 5 * t] = colour
            frames.append(frame)
        write_video(root / ("sub" if number == 2 else ".") / f"clip{number}.mp4", frames)
    return root


@pytest.fixture(scope="module")
def served(search_dir, tmp_path_factory, smollm2_tokenizer):
    from apps.limits import AppLimits
    from apps.search import SearchService
    from apps.service import ModelService
    from apps.video_chat import launch_app
    from vlm.model import load_model
    from vlm.retrieval.video_text_model import load_video_text_model

    glue_dir = save_tiny_glue(build_tiny_glue(smollm2_tokenizer), smollm2_tokenizer, tmp_path_factory.mktemp("glue"))
    limits = AppLimits(**LIMITS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("uploads")))
        video_text = load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL)
        service = ModelService(load_model(glue_dir), limits, model_dir=glue_dir)
        # as the app does: the search side's model work runs in the glue's worker
        search = SearchService.start(
            video_text,
            search_dir,
            limits,
            index_dir=tmp_path_factory.mktemp("index"),
            progress=False,
            run_model_work=service.run_model_work,
        )
        demo = launch_app(service, port=free_port(), examples=[], prevent_thread_lock=True, quiet=True, search=search)
        try:
            yield demo.local_url, search
        finally:
            demo.close()


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(served[0], analytics_enabled=False, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def test_search_endpoint_ranks_the_folder_as_the_library_does(served, client, search_dir):
    _, search = served
    gallery, scores = client.predict("a red square", 3, api_name="/search")
    index = search.index
    expected_scores, expected_rows = index.search(search.model.embed_texts(["a red square"]), 3)
    expected = [index.videos[int(r)] for r in expected_rows[0]]
    assert [item["clip"] for item in scores] == [p.split("/")[-1] for p in expected]
    assert [item["score"] for item in scores] == pytest.approx(
        [round(float(s), 4) for s in expected_scores[0]], abs=1e-4
    )
    assert len(gallery) == 3 and all(item["caption"].split()[0].endswith(".mp4") for item in gallery)
    # the clips of the search folder are served (playable in the page), other files are not
    url = served[0].rstrip("/") + "/gradio_api/file=" + str(search_dir / "clip0.mp4")
    assert httpx.get(url, timeout=10).status_code == 200
    assert httpx.get(served[0].rstrip("/") + "/gradio_api/file=" + str(LVT_NPZ), timeout=10).status_code in (403, 404)


def test_labels_endpoint_equals_library_zero_shot(served, client, search_dir):
    from gradio_client import handle_file

    from encoder.video.decode import load_clip
    from vlm.retrieval.zero_shot import classify_embeddings, label_embeddings

    _, search = served
    result = client.predict(handle_file(str(search_dir / "clip0.mp4")), "red, green, blue", api_name="/labels")
    model = search.model
    clip = load_clip(search_dir / "clip0.mp4", num_frames=model.num_frames, size=model.frame_size)
    expected = classify_embeddings(
        model, model.embed_clips(clip[None]), label_embeddings(model, ["red", "green", "blue"])
    )[0]
    got = {item["label"]: item["confidence"] for item in result["confidences"]}
    assert got == pytest.approx(dict(zip(["red", "green", "blue"], expected.tolist())), abs=1e-5)
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)


def test_search_and_label_errors_are_messages(client, search_dir):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for args, api, message in (
        (("   ", 3), "/search", "empty"),
        (("x" * 5000, 3), "/search", "characters"),
        (("red", 99), "/search", "maximum"),
        ((handle_file(str(search_dir / "clip0.mp4")), ""), "/labels", "No labels"),
    ):
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name=api)


@pytest.mark.quick
def test_search_service_without_folder_or_model(tmp_path, monkeypatch):
    import argparse

    from apps.cli import _search_service
    from apps.limits import AppLimits
    from apps.search import SearchService
    from apps.service import AppInputError
    from vlm.retrieval.video_text_model import load_video_text_model

    service = SearchService(load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL), None)
    with pytest.raises(AppInputError, match="--search-dir"):
        service.search("a red square")
    import vlm.retrieval.video_text_model as video_text_model

    monkeypatch.delenv("PRISM_VLM_VIDEO_TEXT_MODEL", raising=False)
    monkeypatch.setattr(video_text_model, "DEMO_VIDEO_TEXT_MODEL", tmp_path / "not-installed")
    flags = argparse.Namespace(video_text_model=None, video_text_tokenizer=None, search_dir=None, search_index=None)
    assert _search_service(flags, AppLimits(), "cpu") is None  # no model installed, none asked for: no video-text side
    monkeypatch.setenv("PRISM_VLM_VIDEO_TEXT_MODEL", str(tmp_path / "asked-for"))
    with pytest.raises(FileNotFoundError):  # asked for through the environment: a missing model is an error
        _search_service(flags, AppLimits(), "cpu")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        SearchService.start(service.model, tmp_path / "missing", AppLimits())


def test_search_model_work_runs_in_the_thread_it_is_given(search_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from apps.search import SearchService
    from vlm.retrieval.video_text_model import load_video_text_model

    model = load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL)
    locked = SearchService.start(model, search_dir, index_dir=tmp_path / "index", progress=False)
    threads = []
    with ThreadPoolExecutor(1, thread_name_prefix="model-worker") as worker:

        def run_model_work(work):
            def recorded():
                threads.append(threading.current_thread().name)
                return work()

            return worker.submit(recorded).result()

        routed = SearchService.start(
            model, search_dir, index_dir=tmp_path / "index", progress=False, run_model_work=run_model_work
        )
        assert routed.search("a red square", 3) == locked.search("a red square", 3)
        labels = "a red square, a blue circle"
        assert routed.classify(str(search_dir / "clip0.mp4"), labels) == locked.classify(
            str(search_dir / "clip0.mp4"), labels
        )
    assert len(threads) == 2 and all(name.startswith("model-worker") for name in threads)


def test_index_is_kept_and_updated_across_restarts(search_dir, tmp_path):
    from apps.search import SearchService
    from vlm.retrieval.video_text_model import load_video_text_model

    model = load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL)
    folder = tmp_path / "clips"
    shutil.copytree(search_dir, folder)
    first = SearchService.start(model, folder, index_dir=tmp_path / "index", progress=False)
    shutil.copy(folder / "clip0.mp4", folder / "added.mp4")
    second = SearchService.start(model, folder, index_dir=tmp_path / "index", progress=False)
    assert len(first.index) == 3 and len(second.index) == 4
    kept = [second.index.videos.index(v) for v in first.index.videos]
    assert torch.equal(second.index.embeddings[kept], first.index.embeddings)


def test_a_link_in_the_search_folder_that_leads_out_of_it_is_neither_indexed_nor_served(search_dir, tmp_path):
    from apps.search import SearchService
    from vlm.retrieval.video_text_model import load_video_text_model

    model = load_video_text_model(LVT_NPZ, tokenizer=TEST_SPM_MODEL)
    folder, outside = tmp_path / "clips", tmp_path / "private"
    shutil.copytree(search_dir, folder)
    outside.mkdir()
    shutil.copy(search_dir / "clip0.mp4", outside / "secret.mp4")
    (folder / "link.mp4").symlink_to(outside / "secret.mp4")
    (folder / "inner.mp4").symlink_to(folder / "clip0.mp4")  # a link that stays inside is fine
    served = SearchService.start(model, folder, index_dir=tmp_path / "index", progress=False)
    assert len(served.index) == 4 and not any("link.mp4" in video for video in served.index.videos)
    assert all("secret" not in hit.video and "link.mp4" not in hit.video for hit in served.search("a red square", 8))
