"""Tube and BEVT block masks, and the masked (visible-tokens-only) encoder forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

from encoder.videoprism.factorized import encode_tokens, encode_visible_tokens
from encoder.videoprism.masking import (
    block_mask,
    make_mask,
    masked_indices,
    num_masked_positions,
    tube_mask,
    visible_indices,
)

# tiny models: one thread (tests/conftest.py)
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.quick]


@pytest.mark.parametrize("kind", ["tube", "block"])
@pytest.mark.parametrize(
    "grid,ratio", [((16, 16), 0.65), ((16, 16), 0.5), ((4, 4), 0.65), ((2, 2), 0.5), ((3, 5), 0.9)]
)
def test_masks_have_the_exact_count(kind, grid, ratio):
    mask = make_mask(kind, 6, grid, ratio, rng=3)
    expected = num_masked_positions(grid[0] * grid[1], ratio)
    assert mask.dtype == torch.bool and mask.shape == (6, grid[0] * grid[1])
    assert mask.sum(dim=1).tolist() == [expected] * 6
    assert visible_indices(mask).shape == (6, grid[0] * grid[1] - expected)


def test_masked_count_rounding_keeps_one_visible():
    assert num_masked_positions(256, 0.65) == 166
    assert num_masked_positions(256, 0.5) == 128
    assert num_masked_positions(4, 0.99) == 3
    assert num_masked_positions(10, 0.0) == 0
    with pytest.raises(ValueError):
        num_masked_positions(10, 1.0)


@pytest.mark.parametrize("kind", ["tube", "block"])
def test_masks_are_seeded(kind):
    first = make_mask(kind, 4, (8, 8), 0.6, rng=11)
    again = make_mask(kind, 4, (8, 8), 0.6, rng=11)
    other = make_mask(kind, 4, (8, 8), 0.6, rng=12)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    generator = np.random.default_rng(5)
    assert torch.equal(make_mask(kind, 2, (8, 8), 0.6, rng=generator)[0:1], make_mask(kind, 1, (8, 8), 0.6, rng=5))


def test_rows_of_a_batch_differ():
    mask = tube_mask(8, (8, 8), 0.5, rng=0)
    assert len({tuple(row.tolist()) for row in mask}) == 8


def _largest_component(mask_2d: np.ndarray) -> int:
    seen = np.zeros_like(mask_2d)
    best = 0
    for start in zip(*np.nonzero(mask_2d)):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            r, c = stack.pop()
            size += 1
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nr, nc = r + dr, c + dc
                if 0 <= nr < mask_2d.shape[0] and 0 <= nc < mask_2d.shape[1] and mask_2d[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        best = max(best, size)
    return best


def test_block_masks_are_blocky_and_tube_masks_are_not():
    """BEVT masks are unions of rectangles of >= 16 positions: their connected pieces are large."""
    grid = (16, 16)
    block = block_mask(20, grid, 0.65, rng=0).reshape(20, *grid).numpy()
    tube = tube_mask(20, grid, 0.3, rng=0).reshape(20, *grid).numpy()
    block_largest = np.mean([_largest_component(m) for m in block])
    tube_largest = np.mean([_largest_component(m) for m in tube])
    assert block_largest >= 30
    assert block_largest > 2 * tube_largest
    # Every block-mask row covers whole rectangles: some 4 x 4-ish area is fully masked.
    for m in block:
        windows = np.lib.stride_tricks.sliding_window_view(m, (3, 3))
        assert windows.all(axis=(-1, -2)).any()


def test_block_mask_spreads_over_the_grid():
    """Blocks land anywhere (corners less often than the centre, as with BEiT's generator)."""
    counts = block_mask(400, (8, 8), 0.5, rng=1).float().mean(dim=0)
    assert counts.min() > 0.08 and counts.max() < 0.95


def test_indices_are_sorted_and_complementary():
    mask = block_mask(3, (6, 6), 0.65, rng=2)
    visible, masked = visible_indices(mask), masked_indices(mask)
    for row in range(3):
        assert torch.equal(torch.sort(visible[row]).values, visible[row])
        assert not mask[row, visible[row]].any() and mask[row, masked[row]].all()
        assert sorted(visible[row].tolist() + masked[row].tolist()) == list(range(36))


def test_indices_reject_ragged_masks():
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match="same number"):
        visible_indices(mask)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask kind"):
        make_mask("random", 1, (4, 4), 0.5)
    with pytest.raises(ValueError, match="grid"):
        tube_mask(1, (0, 4), 0.5)
    with pytest.raises(ValueError, match="ratio"):
        block_mask(1, (4, 4), -0.1)


# --------------------------------------------------------------------------------------------------
# Masked forward
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    config = VideoPrismVisionConfig(
        image_size=72,
        num_frames=4,
        tubelet_size=[1, 18, 18],
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_spatial_layers=2,
        num_temporal_layers=2,
    )
    model = VideoPrismVisionModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm scales and position embeddings
        for name, param in model.named_parameters():
            if "layernorm" in name or "position" in name:
                param.normal_(0.0, 0.3)
    return model


def test_masked_forward_with_nothing_masked_equals_the_ordinary_forward(tiny_encoder):
    pixels = torch.rand(2, 4, 3, 72, 72)
    with torch.no_grad():
        ordinary = tiny_encoder(pixel_values_videos=pixels).last_hidden_state
        visible = visible_indices(torch.zeros(2, 16, dtype=torch.bool))
        masked = encode_visible_tokens(tiny_encoder, pixels, visible)
    assert masked.shape == ordinary.shape == (2, 4 * 16, 32)
    assert (masked - ordinary).abs().max().item() <= 1e-5


def test_masked_forward_with_other_frame_counts_matches_interpolation(tiny_encoder):
    pixels = torch.rand(1, 3, 3, 72, 72)
    with torch.no_grad():
        ordinary = encode_tokens(tiny_encoder, pixels)
        masked = encode_visible_tokens(tiny_encoder, pixels, torch.arange(16)[None])
    assert (masked - ordinary).abs().max().item() <= 1e-5


def test_masked_forward_equals_running_the_kept_tokens_alone(tiny_encoder):
    """The visible tokens' outputs depend only on visible tokens: recompute them by hand."""
    pixels = torch.rand(2, 4, 3, 72, 72)
    mask = tube_mask(2, (4, 4), 0.5, rng=0)
    visible = visible_indices(mask)
    with torch.no_grad():
        out = encode_visible_tokens(tiny_encoder, pixels, visible)
        model = tiny_encoder
        for b in range(2):
            emb = model.spatial_embeddings(pixels[b : b + 1])[:, visible[b]]  # [T, K, D]
            for layer in model.spatial_layers:
                emb = layer(emb)
            emb = model.layernorm1(emb).transpose(0, 1) + model.temporal_embeddings.position_embeddings  # [K, T, D]
            for layer in model.temporal_layers:
                emb = layer(emb)
            expected = model.layernorm2(emb).transpose(0, 1).reshape(-1, 32)
            assert (out[b] - expected).abs().max().item() <= 1e-5
    # and a masked token changes nothing visible while a visible one does
    changed = pixels.clone()
    hidden_position = int(masked_indices(mask)[0, 0])
    row, col = divmod(hidden_position, 4)
    changed[0, :, :, row * 18 : (row + 1) * 18, col * 18 : (col + 1) * 18] = 0.5
    with torch.no_grad():
        assert torch.allclose(encode_visible_tokens(tiny_encoder, changed, visible), out, atol=1e-6)
    shown = int(visible[0, 0])
    row, col = divmod(shown, 4)
    changed[0, :, :, row * 18 : (row + 1) * 18, col * 18 : (col + 1) * 18] = 0.9
    with torch.no_grad():
        assert not torch.allclose(encode_visible_tokens(tiny_encoder, changed, visible)[0], out[0], atol=1e-4)


def test_masked_forward_crops_temporal_positions_for_images(tiny_encoder):
    image = torch.rand(1, 1, 3, 72, 72)
    visible = torch.arange(16)[None]
    with torch.no_grad():
        cropped = encode_visible_tokens(tiny_encoder, image, visible, crop_temporal_positions=True)
        interpolated = encode_visible_tokens(tiny_encoder, image, visible)
        model = tiny_encoder
        emb = model.spatial_embeddings(image)
        for layer in model.spatial_layers:
            emb = layer(emb)
        emb = model.layernorm1(emb).transpose(0, 1) + model.temporal_embeddings.position_embeddings[:, :1]
        for layer in model.temporal_layers:
            emb = layer(emb)
        expected = model.layernorm2(emb).transpose(0, 1).reshape(1, 16, 32)
    assert (cropped - expected).abs().max().item() <= 1e-5
    assert not torch.allclose(cropped, interpolated, atol=1e-4)


def test_masked_forward_backpropagates_and_checks_indices(tiny_encoder):
    pixels = torch.rand(1, 4, 3, 72, 72)
    visible = visible_indices(block_mask(1, (4, 4), 0.5, rng=0))
    tiny_encoder.zero_grad()
    encode_visible_tokens(tiny_encoder, pixels, visible).square().mean().backward()
    grad = tiny_encoder.spatial_layers[0].attention.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    tiny_encoder.zero_grad()
    with pytest.raises(ValueError, match="indices"):
        encode_visible_tokens(tiny_encoder, pixels, torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match="shape"):
        encode_visible_tokens(tiny_encoder, pixels, torch.tensor([0, 1]))
