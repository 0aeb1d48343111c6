"""Attention kernels of the encoder: ``load_encoder(..., attn_implementation=...)``, eager vs flex
attention parity with the attention logit softcap in force, and the FLOP count of
``scripts/bench_encoder_gpu.py`` (``encoder.videoprism.flops``) against PyTorch's FLOP counter."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    VideoPrismClipModel,
    VideoPrismConfig,
    VideoPrismTextConfig,
    VideoPrismVisionConfig,
    VideoPrismVisionModel,
)

from encoder.videoprism.factorized import encode_tokens
from encoder.videoprism.flops import videoprism_forward_flops
from encoder.videoprism.loading import ATTN_IMPLEMENTATIONS, load_encoder
from tests.helpers.fixture_files import REFERENCE_DIR as REFERENCE
from tests.helpers.scripts import import_script

tiny_config = import_script("bench_encoder_gpu").tiny_config  # the GPU benchmark's CPU smoke model
SOFTCAP = tiny_config().attn_logit_softcapping
FRAMES, SIZE = tiny_config().num_frames, tiny_config().image_size


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """One random tiny encoder saved twice: with the softcap (5) and with it out of reach (1e6)."""
    root = tmp_path_factory.mktemp("attn")
    torch.manual_seed(0)
    model = VideoPrismVisionModel(tiny_config())
    model.save_pretrained(root / "capped")
    uncapped = VideoPrismVisionModel(tiny_config(softcap=1e6))
    uncapped.load_state_dict(model.state_dict())
    uncapped.save_pretrained(root / "uncapped")
    return root


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(1)
    return torch.rand(2, FRAMES, 3, SIZE, SIZE)


def tokens(model, clips) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values_videos=clips).last_hidden_state


def test_softcap_changes_the_output(tiny_dirs, clips):
    """The parity test below is meaningful: the cap moves the tokens far more than its tolerance."""
    capped = tokens(load_encoder(tiny_dirs / "capped", attn_implementation="eager"), clips)
    uncapped = tokens(load_encoder(tiny_dirs / "uncapped", attn_implementation="eager"), clips)
    assert float((capped - uncapped).abs().max()) > 1e-2


@pytest.mark.slow
def test_flex_attention_matches_eager_with_softcap(tiny_dirs, clips):
    eager = load_encoder(tiny_dirs / "capped", attn_implementation="eager")
    flex = load_encoder(tiny_dirs / "capped", attn_implementation="flex_attention")
    assert eager.config._attn_implementation == "eager"
    assert flex.config._attn_implementation == "flex_attention"
    expected, got = tokens(eager, clips), tokens(flex, clips)  # flex compiles on first use (CPU: C++ inductor)
    assert got.shape == expected.shape == (2, FRAMES * (SIZE // 8) ** 2, 32)
    max_diff = float((got - expected).abs().max())
    print(f"flex_attention vs eager max abs diff (fp32, CPU): {max_diff:.2e}")
    assert max_diff <= 1e-4


@pytest.mark.quick
def test_default_is_unchanged_eager(tiny_dirs, clips):
    default = load_encoder(tiny_dirs / "capped")
    assert default.config._attn_implementation == "eager"
    eager = load_encoder(tiny_dirs / "capped", attn_implementation="eager")
    assert torch.equal(tokens(default, clips), tokens(eager, clips))


@pytest.mark.parametrize("name", ["sdpa", "flash", "Eager", ""])
def test_unknown_attn_implementation_raises(tiny_dirs, name):
    with pytest.raises(ValueError, match="attn_implementation"):
        load_encoder(tiny_dirs / "capped", attn_implementation=name)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed here")
@pytest.mark.quick
def test_flash_attention_2_without_flash_attn_is_an_error(tiny_dirs):
    assert "flash_attention_2" in ATTN_IMPLEMENTATIONS
    with pytest.raises((ImportError, ValueError)):
        load_encoder(tiny_dirs / "capped", attn_implementation="flash_attention_2")


def test_every_source_kind_takes_the_attn_implementation(tmp_path):
    """Vision directory, video-text directory (vision tower) and official .npz (converted)."""
    torch.manual_seed(0)
    VideoPrismVisionModel(tiny_config()).save_pretrained(tmp_path / "vision")
    text = VideoPrismTextConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    clip_config = VideoPrismConfig(vision_config=tiny_config().to_dict(), text_config=text.to_dict())
    VideoPrismClipModel(clip_config).save_pretrained(tmp_path / "clip")
    sources = [tmp_path / "vision", tmp_path / "clip", REFERENCE / "encoder_tiny_params.npz"]
    for source in sources:
        for name in ATTN_IMPLEMENTATIONS[:2]:
            model = load_encoder(source, attn_implementation=name)
            assert isinstance(model, VideoPrismVisionModel)
            assert model.config._attn_implementation == name, (source, name)
            assert all(layer.attention.config._attn_implementation == name for layer in model.spatial_layers)


@pytest.mark.quick
def test_frame_paddings_need_eager_attention(tiny_dirs, clips):
    flex = load_encoder(tiny_dirs / "capped", attn_implementation="flex_attention")
    paddings = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])
    with pytest.raises(NotImplementedError, match="eager"):
        encode_tokens(flex, clips, paddings)


@pytest.mark.parametrize(
    "config, frames, size",
    [(tiny_config(), FRAMES, SIZE), (VideoPrismVisionConfig(), 16, 288), (VideoPrismVisionConfig(), 8, 144)],
    ids=["tiny", "videoprism-b-16x288", "videoprism-b-8x144"],
)
@pytest.mark.quick
def test_flop_count_matches_torch_flop_counter(config, frames, size):
    """encoder.videoprism.flops counts what FlopCounterMode counts (on the meta device: no compute)."""
    with torch.device("meta"):
        model = VideoPrismVisionModel(config).eval()
    video = torch.empty(1, frames, 3, size, size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values_videos=video, interpolate_pos_encoding=True)
    counted = videoprism_forward_flops(config, frames=frames, size=size)
    assert counted["total"] == counter.get_total_flops()
    if (frames, size) == (16, 288):
        assert 0.95e12 < counted["total"] < 0.98e12  # about 0.95 TFLOP per VideoPrism-B clip
