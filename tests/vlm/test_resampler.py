"""The Perceiver Resampler: shapes, the paper's two changes to Flamingo, skip connections, I/O."""

from __future__ import annotations

import json

import pytest
import torch

from vlm.resampler import PerceiverResampler, ResamplerConfig

pytestmark = pytest.mark.quick

VIDEO_WIDTH, LLM_WIDTH = 24, 40


def make_resampler(**overrides) -> PerceiverResampler:
    torch.manual_seed(0)
    values = dict(video_width=VIDEO_WIDTH, llm_width=LLM_WIDTH, num_latents=6, num_heads=4)
    values.update(overrides)
    resampler = PerceiverResampler(ResamplerConfig(**values)).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines, so that the two norms are distinguishable
        for module in resampler.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return resampler


def reference_forward(resampler: PerceiverResampler, video_tokens: torch.Tensor) -> torch.Tensor:
    """Plain-softmax re-implementation of the documented computation."""
    latents = resampler.latents.expand(video_tokens.shape[0], -1, -1)
    heads = resampler.config.num_heads
    for layer in resampler.layers:
        attention = layer.cross_attention
        q = attention.query(attention.query_norm(latents))
        video = attention.video_norm(video_tokens)
        k, v = attention.key(video), attention.value(video)
        split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        latents = latents + attention.out(attended)
        latents = latents + layer.feed_forward(latents)
    return latents


def test_output_shape_is_latents_by_llm_width_for_any_depth():
    tokens = torch.randn(3, 10, VIDEO_WIDTH)
    for depth in (1, 3):
        resampler = make_resampler(depth=depth)
        assert len(resampler.layers) == depth
        assert resampler(tokens).shape == (3, 6, LLM_WIDTH)
    assert PerceiverResampler(ResamplerConfig(video_width=8, llm_width=16, num_heads=2)).latents.shape == (256, 16)
    assert ResamplerConfig(video_width=8, llm_width=16).depth == 1


def test_matches_plain_softmax_reference():
    resampler = make_resampler(depth=2)
    tokens = torch.randn(2, 9, VIDEO_WIDTH)
    torch.testing.assert_close(resampler(tokens), reference_forward(resampler, tokens), atol=1e-5, rtol=1e-5)


def test_separate_layer_norms_for_latents_and_video_tokens():
    resampler = make_resampler()
    attention = resampler.layers[0].cross_attention
    assert attention.query_norm is not attention.video_norm
    assert attention.query_norm.normalized_shape == (LLM_WIDTH,)
    assert attention.video_norm.normalized_shape == (VIDEO_WIDTH,)
    tokens = torch.randn(1, 5, VIDEO_WIDTH)
    before = resampler(tokens)
    with torch.no_grad():
        attention.video_norm.bias.add_(1.0)  # touches only the key/value path
    assert not torch.allclose(resampler(tokens), before)


def test_keys_and_values_come_from_video_tokens_only():
    # With a single video token every latent's attention is a softmax over one key, so each latent
    # receives exactly out(value(LN(token))). Concatenating latents into the keys would mix them in.
    resampler = make_resampler()
    attention = resampler.layers[0].cross_attention
    token = torch.randn(2, 1, VIDEO_WIDTH)
    latents = resampler.latents.expand(2, -1, -1)
    attended = attention(latents, token)
    expected = attention.out(attention.value(attention.video_norm(token)))  # [2, 1, H]
    torch.testing.assert_close(attended, expected.expand_as(attended), atol=1e-6, rtol=1e-5)
    # Key/value projections read the video width, the query projection the LLM width.
    assert attention.key.in_features == VIDEO_WIDTH and attention.value.in_features == VIDEO_WIDTH
    assert attention.query.in_features == LLM_WIDTH


def test_skip_connections_pass_latents_through_when_branches_are_zero():
    resampler = make_resampler(depth=2)
    with torch.no_grad():
        for layer in resampler.layers:
            layer.cross_attention.out.weight.zero_()
            layer.feed_forward.down.weight.zero_()
    output = resampler(torch.randn(2, 7, VIDEO_WIDTH))
    torch.testing.assert_close(output, resampler.latents.expand(2, -1, -1))


def test_video_mask_equals_dropping_masked_tokens():
    resampler = make_resampler()
    tokens = torch.randn(1, 8, VIDEO_WIDTH)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1, 1, 1]], dtype=torch.bool)
    masked = resampler(tokens, video_mask=mask)
    dropped = resampler(tokens[:, mask[0]])
    torch.testing.assert_close(masked, dropped, atol=1e-5, rtol=1e-5)


def test_permuting_video_tokens_does_not_change_output():
    resampler = make_resampler()
    tokens = torch.randn(2, 12, VIDEO_WIDTH)
    permuted = tokens[:, torch.randperm(12)]
    torch.testing.assert_close(resampler(tokens), resampler(permuted), atol=1e-5, rtol=1e-5)


def test_rejects_wrong_token_width_and_bad_config():
    resampler = make_resampler()
    with pytest.raises(ValueError, match=str(VIDEO_WIDTH)):
        resampler(torch.randn(1, 4, VIDEO_WIDTH + 1))
    with pytest.raises(ValueError, match="divisible"):
        ResamplerConfig(video_width=8, llm_width=30, num_heads=4)
    with pytest.raises(ValueError, match="num_latents"):
        ResamplerConfig(video_width=8, llm_width=16, num_latents=0)


def test_save_load_round_trip(tmp_path):
    resampler = make_resampler(depth=2)
    resampler.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resampler.safetensors", "resampler_config.json"]
    assert json.loads((tmp_path / "resampler_config.json").read_text())["depth"] == 2
    restored = PerceiverResampler.from_pretrained(tmp_path).eval()
    tokens = torch.randn(2, 5, VIDEO_WIDTH)
    assert torch.equal(restored(tokens), resampler(tokens))


def test_load_rejects_weights_of_another_shape(tmp_path):
    make_resampler().save_pretrained(tmp_path)
    wider = ResamplerConfig(video_width=VIDEO_WIDTH, llm_width=LLM_WIDTH + 8, num_latents=6, num_heads=4)
    with pytest.raises(ValueError, match="does not match"):
        PerceiverResampler.from_pretrained(tmp_path, config=wider)
