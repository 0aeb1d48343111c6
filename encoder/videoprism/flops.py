"""Matmul FLOPs of one VideoPrism encoder forward, from its config (for FLOP/s and MFU figures).

Counted (2 FLOPs per multiply-add): the patch embedding, the q/k/v/o projections, the attention
scores (Q K^T) and values (P V), and both MLP matmuls of every spatial and temporal layer. Not
counted: LayerNorm, softmax, the logit softcap, GELU, biases, position embeddings (elementwise,
under 1% of the total). This is what ``torch.utils.flop_counter.FlopCounterMode`` counts for a
forward with eager attention (``tests/encoder/videoprism/test_attention_backends.py`` checks the two agree).
"""

from __future__ import annotations

from collections.abc import Iterable


def _pair(value) -> tuple[int, int]:
    if isinstance(value, Iterable):
        height, width = value
        return int(height), int(width)
    return int(value), int(value)


def videoprism_forward_flops(config, frames: int | None = None, size: int | tuple[int, int] | None = None) -> dict:
    """FLOPs of one clip through a ``VideoPrismVisionModel`` (factorised: spatial then temporal layers).

    config: a ``VideoPrismVisionConfig``; frames / size default to its ``num_frames`` / ``image_size``.
    Returns a dict of FLOP counts: ``patch_embedding``, ``spatial_linear``, ``spatial_attention``,
    ``temporal_linear``, ``temporal_attention`` and ``total``, plus ``tokens`` (frames x patches).
    """
    frames = int(config.num_frames if frames is None else frames)
    height, width = _pair(config.image_size if size is None else size)
    tubelet_t, patch_h, patch_w = (int(v) for v in config.tubelet_size)
    if tubelet_t != 1:
        raise ValueError(f"VideoPrism embeds each frame alone (tubelet time 1), got tubelet_size {config.tubelet_size}")
    patches = (height // patch_h) * (width // patch_w)
    tokens = frames * patches
    hidden, mlp = int(config.hidden_size), int(config.intermediate_size)
    head_dim = getattr(config, "head_dim", None) or hidden // int(config.num_attention_heads)
    inner = head_dim * int(config.num_attention_heads)  # width of q, k, v

    patch_embedding = 2 * tokens * (int(config.num_channels) * patch_h * patch_w) * hidden
    # q, k, v (hidden -> inner), o (inner -> hidden), fc1 and fc2, for every token of a layer
    linear_per_layer = 2 * tokens * (3 * hidden * inner + inner * hidden + 2 * hidden * mlp)
    # Q K^T and P V: a [L, L] score matrix per sequence and head; spatial: T sequences of N tokens,
    # temporal: N sequences of T tokens
    spatial_attention_per_layer = frames * 2 * 2 * patches * patches * inner
    temporal_attention_per_layer = patches * 2 * 2 * frames * frames * inner

    counts = {
        "patch_embedding": patch_embedding,
        "spatial_linear": int(config.num_spatial_layers) * linear_per_layer,
        "spatial_attention": int(config.num_spatial_layers) * spatial_attention_per_layer,
        "temporal_linear": int(config.num_temporal_layers) * linear_per_layer,
        "temporal_attention": int(config.num_temporal_layers) * temporal_attention_per_layer,
    }
    counts["total"] = sum(counts.values())
    counts["tokens"] = tokens
    return counts
