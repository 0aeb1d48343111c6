"""Forward passes of transformers' ``VideoPrismVisionModel`` that its own ``forward`` does not offer.

``encode_tokens`` runs the model's own modules (patch embedding, spatial layers, LayerNorm, temporal
layers, LayerNorm) in the official factorised order, with optional frame paddings as in the
official ``FactorizedEncoder``: a padded frame's tokens are masked as attention keys in the spatial
and temporal encoders and its FFN outputs are zeroed. Without paddings it calls the model's own
``forward``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import VideoPrismVisionModel


def _padding_to_key_mask(paddings: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[S, L] paddings (1 = padding) -> additive attention mask [S, 1, 1, L] (large negative at padding)."""
    large_negative = torch.finfo(dtype).min * 0.7  # as the official code: -0.7 * float max
    return (paddings.to(dtype) * large_negative)[:, None, None, :]


def _run_layers(layers: nn.ModuleList, hidden: torch.Tensor, paddings: torch.Tensor) -> torch.Tensor:
    """Pre-LN transformer layers with padded keys masked and padded FFN outputs zeroed.

    hidden: [S, L, D]; paddings: [S, L] with 1 = padding. Returns [S, L, D].
    """
    key_mask = _padding_to_key_mask(paddings, hidden.dtype)
    keep = (1.0 - paddings.to(hidden.dtype))[..., None]  # [S, L, 1]
    for layer in layers:
        attended, _ = layer.attention(layer.layernorm_before(hidden), key_mask)
        hidden = hidden + attended
        hidden = hidden + layer.mlp(layer.layernorm_after(hidden)) * keep
    return hidden


def encode_tokens(
    model: VideoPrismVisionModel,
    pixel_values_videos: torch.Tensor,
    frame_paddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encoder tokens of a batch of clips.

    pixel_values_videos: [B, T, 3, H, W] RGB in [0, 1]; H and W multiples of the patch size. Position
        embeddings are interpolated when T, H or W differ from the model's native shape.
    frame_paddings: optional [B, T], 1 = padded frame.
    Returns [B, T*N, D] with token index t*N + n (n row-major over the patch grid).
    """
    if frame_paddings is None:
        return model(pixel_values_videos=pixel_values_videos, interpolate_pos_encoding=True).last_hidden_state

    batch, frames = pixel_values_videos.shape[:2]
    if tuple(frame_paddings.shape) != (batch, frames):
        raise ValueError(f"frame_paddings has shape {tuple(frame_paddings.shape)}, expected {(batch, frames)}")
    spatial = model.spatial_embeddings(pixel_values_videos, interpolate_pos_encoding=True)  # [B*T, N, D]
    num_patches, width = spatial.shape[1:]
    patch_paddings = frame_paddings.reshape(batch * frames, 1).expand(-1, num_patches)  # [B*T, N]
    spatial = _run_layers(model.spatial_layers, spatial, patch_paddings)
    spatial = model.layernorm1(spatial)

    temporal = model.temporal_embeddings(spatial, pixel_values_videos.shape, interpolate_pos_encoding=True)  # [B*N, T, D]
    temporal_paddings = frame_paddings[:, None, :].expand(-1, num_patches, -1).reshape(batch * num_patches, frames)
    temporal = _run_layers(model.temporal_layers, temporal, temporal_paddings)
    temporal = model.layernorm2(temporal)

    tokens = temporal.reshape(batch, num_patches, frames, width).transpose(1, 2)  # [B, T, N, D]
    return tokens.reshape(batch, frames * num_patches, width)
