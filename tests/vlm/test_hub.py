"""vlm.model and vlm.hub: the glue as a transformers PreTrainedModel -- save_pretrained / from_pretrained /
AutoModel round trips, the shipped demo model through AutoModel, loading by Hub id offline from the
Hub cache, the model card, and push_to_hub against a local stand-in for the Hub API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.tiny_glue import FRAMES, write_clip
from vlm.inference.assistant import VideoAssistant
from vlm.model import PrismVlmConfig, PrismVlmForConditionalGeneration  # importing registers the Auto classes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "a.mp4", seed=0)


def test_auto_classes_round_trip_a_saved_glue(glue_dir, clip, tmp_path):
    from transformers import AutoConfig, AutoModel

    from vlm.model import load_model

    assert isinstance(AutoConfig.from_pretrained(glue_dir), PrismVlmConfig)
    model = AutoModel.from_pretrained(glue_dir)
    assert isinstance(model, PrismVlmForConditionalGeneration)
    reference = load_model(glue_dir)
    expected = VideoAssistant(reference).caption(
        clips=(clips := VideoAssistant(reference).load_videos([clip], FRAMES)), max_new_tokens=6
    )
    assert VideoAssistant(model).caption(clips=clips, max_new_tokens=6) == expected
    out = model.save_pretrained(tmp_path / "again")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "resampler.safetensors"]  # one config
    saved, original = load_file(str(out / "resampler.safetensors")), load_file(str(glue_dir / "resampler.safetensors"))
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    again = AutoModel.from_pretrained(out)
    assert VideoAssistant(again).caption(clips=clips, max_new_tokens=6) == expected
    card = (out / "README.md").read_text()
    assert "AutoModel.from_pretrained" in card and str(reference.config.llm_source) in card


def test_card_shows_the_metrics_file(glue_dir, tmp_path):
    from transformers import AutoModel

    out = tmp_path / "glue"
    shutil.copytree(glue_dir, out)
    (out / "metrics.json").write_text(json.dumps({"closed_colour_accuracy": 0.848}))
    AutoModel.from_pretrained(out).save_pretrained(out)
    assert '"closed_colour_accuracy": 0.848' in (out / "README.md").read_text()


@pytest.mark.parametrize("layout", ["legacy config only", "legacy config and nested config.json"])
def test_directories_in_the_older_formats_load(glue_dir, tmp_path, clip, layout):
    """Saved before config.json held everything: prism_vlm_config.json (the glue's fields) alone, or with a
    config.json that nested them under "glue"; both load, and saving again writes the one config.json."""
    values = json.loads((glue_dir / "config.json").read_text())
    glue = {k: v for k, v in values.items() if k not in ("model_type", "transformers_version")}
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(glue_dir / "resampler.safetensors", old / "resampler.safetensors")
    (old / "prism_vlm_config.json").write_text(json.dumps(glue))
    if layout != "legacy config only":
        (old / "config.json").write_text(json.dumps({"glue": glue, "model_type": "prism_vlm"}))
    model = PrismVlmForConditionalGeneration.from_pretrained(old)
    assert model.config.resampler == PrismVlmForConditionalGeneration.from_pretrained(glue_dir).config.resampler
    clips = VideoAssistant(model).load_videos([clip], FRAMES)
    from transformers import AutoModel

    expected = VideoAssistant(AutoModel.from_pretrained(glue_dir)).caption(clips=clips, max_new_tokens=4)
    assert VideoAssistant(model).caption(clips=clips, max_new_tokens=4) == expected
    model.save_pretrained(old)
    assert sorted(p.name for p in old.iterdir()) == ["README.md", "config.json", "resampler.safetensors"]
    assert isinstance(AutoModel.from_pretrained(old), PrismVlmForConditionalGeneration)


@pytest.mark.real_llm
def test_the_shipped_demo_model_loads_through_auto_model():
    from transformers import AutoModel

    model = AutoModel.from_pretrained(REPO / "vlm" / "demo_model")
    assistant = VideoAssistant(model)
    clips = assistant.load_videos([REPO / "apps" / "examples" / "cyan_star_moving_down.mp4"])
    reply = assistant.chat([{"role": "user", "content": "What colour is the object?"}], clips=clips)
    assert "cyan" in reply.lower()


def test_a_hub_id_loads_offline_from_the_hub_cache(glue_dir, tmp_path):
    """The Hub cache layout (models--USER--NAME/snapshots/REV, refs/main) with HF_HUB_OFFLINE=1: no network."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-glue"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(glue_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    code = (
        "import vlm.model\nfrom transformers import AutoModel\n"
        "m = AutoModel.from_pretrained('someone/tiny-glue')\nprint(type(m).__name__, m.config.num_frames)\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["PrismVlmForConditionalGeneration", str(FRAMES)]


@pytest.mark.quick
def test_push_to_hub_uploads_the_saved_files(glue_dir, monkeypatch):
    """Against a local stand-in for huggingface_hub.HfApi (no network here): the repo is created and
    the files save_pretrained writes are uploaded, with this model's card."""
    from types import SimpleNamespace

    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls["create_repo"] = (repo_id, exist_ok)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, commit_message=None, revision=None, create_pr=False, **kwargs):
        calls["uploaded"] = sorted(p.name for p in Path(folder_path).iterdir())
        calls["card"] = (Path(folder_path) / "README.md").read_text()
        return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = PrismVlmForConditionalGeneration.from_pretrained(glue_dir).push_to_hub("someone/tiny-glue")
    assert url.endswith("someone/tiny-glue/commit/1") and calls["create_repo"] == ("someone/tiny-glue", True)
    assert calls["uploaded"] == ["README.md", "config.json", "resampler.safetensors"]
    assert "prism-vlm glue" in calls["card"]


def test_bad_sources_are_clear_errors(tmp_path, monkeypatch):
    import huggingface_hub

    from vlm.model import load_model

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="could not be fetched or found in the Hub cache"):
        load_model("nobody/no-such-glue")
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        PrismVlmForConditionalGeneration.from_pretrained(str(tmp_path / "nothing" / "here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a prism-vlm glue"):
        PrismVlmForConditionalGeneration.from_pretrained(tmp_path / "empty")


def test_processor_prepares_videos_and_text_for_the_model(glue_dir, clip):
    from transformers import AutoModel

    assistant = VideoAssistant(AutoModel.from_pretrained(glue_dir))
    inputs = assistant.processor(videos=[clip, clip], text=["a", "a longer prompt here"])
    size = assistant.config.frame_size
    assert tuple(inputs["pixel_values_videos"].shape) == (2, FRAMES, size, size, 3)
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][1].all()  # left-padded
    assert assistant.caption(clips=inputs["pixel_values_videos"], max_new_tokens=4) == assistant.caption(
        clips=assistant.load_videos([clip, clip], FRAMES), max_new_tokens=4
    )
    with pytest.raises(ValueError, match="give videos"):
        assistant.processor()
