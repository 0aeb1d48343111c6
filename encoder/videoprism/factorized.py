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
    implementation = layers[0].attention.config._attn_implementation if len(layers) else "eager"
    if implementation not in (None, "eager"):
        # flash attention takes no additive mask; transformers' flex score_mod indexes the mask as
        # mask[b][0][q][k], which crashes compiled CPU flex attention (torch 2.13) and, with this
        # [S, 1, 1, L] mask, reads past its size-1 query axis.
        raise NotImplementedError(
            f"frame paddings need attn_implementation 'eager', not {implementation!r}; "
            "load the encoder with attn_implementation='eager' (or None) to encode padded clips"
        )
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
    frame_paddings: optional [B, T], 1 = padded frame; needs the model's eager attention (NotImplementedError
        for flex or flash attention). Without paddings any ``attn_implementation`` works.
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

    temporal = model.temporal_embeddings(
        spatial, pixel_values_videos.shape, interpolate_pos_encoding=True
    )  # [B*N, T, D]
    temporal_paddings = frame_paddings[:, None, :].expand(-1, num_patches, -1).reshape(batch * num_patches, frames)
    temporal = _run_layers(model.temporal_layers, temporal, temporal_paddings)
    temporal = model.layernorm2(temporal)

    tokens = temporal.reshape(batch, num_patches, frames, width).transpose(1, 2)  # [B, T, N, D]
    return tokens.reshape(batch, frames * num_patches, width)


def _temporal_position_embeddings(model: VideoPrismVisionModel, frames: int, crop: bool) -> torch.Tensor:
    """[1, T, D] temporal position embeddings for T frames: the model's table cropped to its first T rows
    (``crop`` and T <= native frames: how VideoPrism feeds images as one-frame videos) or interpolated
    as transformers does (otherwise)."""
    table = model.temporal_embeddings.position_embeddings  # [1, T_native, D]
    if crop and frames <= table.shape[1]:
        return table[:, :frames]
    placeholder = table.new_empty(1, frames, table.shape[-1])
    return model.temporal_embeddings.interpolate_pos_encoding(placeholder)


def encode_visible_tokens(
    model: VideoPrismVisionModel,
    pixel_values_videos: torch.Tensor,
    visible_positions: torch.Tensor,
    crop_temporal_positions: bool = False,
) -> torch.Tensor:
    """Encoder tokens of the visible spatial positions only (tube-shaped masks: the same in every frame).

    Only the visible tokens run through the factorised encoder: the spatial layers attend over each
    frame's K visible positions, the temporal layers over the T frames of each visible position.
    The patch embedding and the position embeddings are the model's own (added before dropping
    tokens, so each token keeps its position). With every position visible this is the model's
    ordinary forward.

    pixel_values_videos: [B, T, 3, H, W] RGB in [0, 1]; H and W multiples of the patch size.
    visible_positions: int64 [B, K], indices into the N = (H/p)*(W/p) patch positions (row-major),
        e.g. ``encoder.videoprism.masking.visible_indices(mask)``.
    crop_temporal_positions: when T is below the model's frame count, use the first T temporal
        position embeddings instead of interpolating them (VideoPrism's rule for images, T = 1).
    Returns [B, T*K, D] with token index t*K + k (k indexing ``visible_positions[b]``).
    """
    batch, frames = pixel_values_videos.shape[:2]
    if visible_positions.ndim != 2 or visible_positions.shape[0] != batch:
        raise ValueError(f"visible_positions has shape {tuple(visible_positions.shape)}, expected [{batch}, K]")
    spatial = model.spatial_embeddings(pixel_values_videos, interpolate_pos_encoding=True)  # [B*T, N, D]
    num_patches, width = spatial.shape[1:]
    num_visible = visible_positions.shape[1]
    if num_visible == 0 or int(visible_positions.min()) < 0 or int(visible_positions.max()) >= num_patches:
        raise ValueError(f"visible_positions must hold 1..{num_patches} indices in [0, {num_patches})")
    index = visible_positions.to(spatial.device)[:, None, :, None].expand(batch, frames, num_visible, width)
    spatial = spatial.reshape(batch, frames, num_patches, width).gather(2, index)  # [B, T, K, D]
    spatial = spatial.reshape(batch * frames, num_visible, width)
    for layer in model.spatial_layers:
        spatial = layer(spatial)
    spatial = model.layernorm1(spatial)

    temporal = spatial.reshape(batch, frames, num_visible, width).transpose(1, 2)  # [B, K, T, D]
    temporal = temporal.reshape(batch * num_visible, frames, width)
    temporal = temporal + _temporal_position_embeddings(model, frames, crop_temporal_positions)
    temporal = model.temporal_embeddings.dropout(temporal)
    for layer in model.temporal_layers:
        temporal = layer(temporal)
    temporal = model.layernorm2(temporal)

    tokens = temporal.reshape(batch, num_visible, frames, width).transpose(1, 2)  # [B, T, K, D]
    return tokens.reshape(batch, frames * num_visible, width)
