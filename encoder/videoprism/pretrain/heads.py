"""Heads of VideoPrism pretraining, built from transformers' VideoPrism modules.

* ``pool_video_tokens``: the stage-1 video tower's head (auxiliary layers, MAP pooling, LayerNorm,
  L2 norm) applied to encoder tokens, e.g. the visible tokens of a masked clip.
* ``DistillationDecoder``: projector MLP (encoder width -> narrower decoder width), a few pre-LN
  ``VideoPrismLayer``s, LayerNorm and a linear layer back to the teacher width (paper Table 10).
* ``TokenDistillationHead``: stage 2's token-wise branch: visible outputs + a learned MASK token
  at the masked positions, randomly shuffled, position embeddings added, decoded.
* ``GlobalDistillationHead``: stage 2's global branch: visible outputs decoded (no shuffle, no
  position embedding) and pooled by a MAP head into one embedding.

Token shuffling (Algorithm 1 of the paper): the full sequence of visible outputs and MASK tokens
is permuted at random and only then are the decoder's position embeddings added, position
embedding i at sequence slot i. The decoder output at slot i is trained towards the teacher's token
at position i, the position its embedding names. So the content arriving at slot i (a visible
token from somewhere else, or a MASK token) never carries the answer for slot i by construction:
the decoder cannot copy a visible token's embedding to its own output, and has to place the
visible tokens (a jigsaw puzzle) while predicting the masked ones. Without shuffling the
permutation is the identity: each visible output sits at its own position (MAE/MVD-style).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import VideoPrismVisionConfig
from transformers.models.videoprism.modeling_videoprism import (
    VideoPrismLayer,
    VideoPrismLayerNorm,
    VideoPrismMultiheadAttentionPoolingHead,
    VideoPrismVideoModel,
)


@dataclass
class DecoderConfig:
    """Shape of a stage-2 decoder (paper Table 10: 4 layers at a narrower width).

    width: decoder width; None = half the encoder width (VideoPrism-g: 1408 -> 512).
    num_layers: transformer layers (4 in the paper).
    num_heads: attention heads; None = width // 64 (at least 1).
    mlp_ratio: FFN width / decoder width.
    projector_hidden: hidden width of the projector MLP; None = the encoder width.
    """

    width: int | None = None
    num_layers: int = 4
    num_heads: int | None = None
    mlp_ratio: int = 4
    projector_hidden: int | None = None

    def resolved(self, encoder_width: int) -> DecoderConfig:
        width = self.width or max(encoder_width // 2, 8)
        heads = self.num_heads or max(width // 64, 1)
        if width % heads:
            raise ValueError(f"decoder width {width} is not divisible by {heads} heads")
        return DecoderConfig(width, self.num_layers, heads, self.mlp_ratio, self.projector_hidden or encoder_width)


def _lecun_normal_(tensor: torch.Tensor) -> None:
    fan_in = tensor.shape[1] if tensor.ndim > 1 else tensor.shape[-1]
    nn.init.trunc_normal_(tensor, std=(1.0 / fan_in) ** 0.5 / 0.87962566103423978)


def init_videoprism_style_(module: nn.Module) -> None:
    """Initialise freshly built modules as transformers' VideoPrism does (lecun-normal linear weights,
    zero biases, VideoPrism LayerNorm scales at 0 since they apply ``weight + 1``)."""
    for sub in module.modules():
        if isinstance(sub, VideoPrismLayerNorm):
            nn.init.zeros_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Linear):
            _lecun_normal_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, VideoPrismMultiheadAttentionPoolingHead):
            nn.init.zeros_(sub.per_dim_scale)
            nn.init.normal_(sub.pooling_attention_query, std=sub.pooling_attention_query.shape[-1] ** -0.5)


def pool_video_tokens(video_model: VideoPrismVideoModel, tokens: torch.Tensor) -> torch.Tensor:
    """The video tower's head on encoder tokens: auxiliary layers -> MAP -> LayerNorm (-> L2 norm).

    tokens: [B, L, D] encoder outputs (all T*N tokens, or the visible T*K of a masked clip).
    Returns [B, D]; equal to ``video_model(pixels).pooler_output[:, 0]`` when ``tokens`` are the
    encoder's tokens of ``pixels``.
    """
    hidden = tokens
    for layer in video_model.auxiliary_layers:
        hidden = layer(hidden)
    pooled = video_model.head_layernorm(video_model.head(hidden)[0])[:, 0]  # [B, D]
    if video_model.config.apply_l2norm:
        pooled = pooled * torch.rsqrt((pooled * pooled).sum(dim=-1, keepdim=True) + 1e-6)
    return pooled


class ProjectorMLP(nn.Module):
    """Linear -> GELU -> Linear, applied per token. [..., in_width] -> [..., out_width]."""

    def __init__(self, in_width: int, out_width: int, hidden_width: int):
        super().__init__()
        self.fc1 = nn.Linear(in_width, hidden_width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_width, out_width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden)))


def _standalone(config: VideoPrismVisionConfig) -> VideoPrismVisionConfig:
    """A config for modules used outside a PreTrainedModel: pick the attention implementation (eager:
    VideoPrism's logit cap rules out SDPA)."""
    if config._attn_implementation is None:
        config = copy.deepcopy(config)
        config._attn_implementation = "eager"
    return config


def _decoder_layer_config(encoder_config: VideoPrismVisionConfig, decoder: DecoderConfig) -> VideoPrismVisionConfig:
    return _standalone(
        VideoPrismVisionConfig(
            hidden_size=decoder.width,
            num_attention_heads=decoder.num_heads,
            intermediate_size=decoder.width * decoder.mlp_ratio,
            hidden_act=encoder_config.hidden_act,
            layer_norm_eps=encoder_config.layer_norm_eps,
            attn_logit_softcapping=encoder_config.attn_logit_softcapping,
            num_spatial_layers=0,
            num_temporal_layers=0,
            num_auxiliary_layers=0,
        )
    )


class DistillationDecoder(nn.Module):
    """Projector MLP to the decoder width, pre-LN transformer layers, LayerNorm, linear to ``out_width``."""

    def __init__(self, encoder_config: VideoPrismVisionConfig, decoder: DecoderConfig, out_width: int):
        super().__init__()
        decoder = decoder.resolved(encoder_config.hidden_size)
        self.width = decoder.width
        self.projector = ProjectorMLP(encoder_config.hidden_size, decoder.width, decoder.projector_hidden)
        layer_config = _decoder_layer_config(encoder_config, decoder)
        self.layers = nn.ModuleList([VideoPrismLayer(layer_config) for _ in range(decoder.num_layers)])
        self.layernorm = VideoPrismLayerNorm(decoder.width, eps=encoder_config.layer_norm_eps)
        self.output = nn.Linear(decoder.width, out_width)

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, L, width] (already projected) -> [B, L, out_width]."""
        for layer in self.layers:
            hidden = layer(hidden)
        return self.output(self.layernorm(hidden))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, encoder width] -> [B, L, out_width]."""
        return self.decode(self.projector(tokens))


def token_positions(visible_positions: torch.Tensor, num_frames: int, num_patches: int) -> torch.Tensor:
    """Sequence positions t*N + n of the visible tokens. [B, K] -> [B, T*K] (order t*K + k)."""
    frame_offsets = torch.arange(num_frames, device=visible_positions.device)[None, :, None] * num_patches
    return (frame_offsets + visible_positions[:, None, :]).reshape(visible_positions.shape[0], -1)


def shuffle_permutations(
    batch_size: int, length: int, shuffle: bool, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """One random permutation of range(length) per row (identity rows when not ``shuffle``). -> int64 [B, L]."""
    if not shuffle:
        return torch.arange(length, device=device).expand(batch_size, length)
    keys = torch.rand(batch_size, length, generator=generator)
    return torch.argsort(keys, dim=1).to(device)


class TokenDistillationHead(nn.Module):
    """Stage 2 token-wise branch: predict the teacher's tokens at all T*N positions from the visible ones."""

    def __init__(self, encoder_config: VideoPrismVisionConfig, decoder: DecoderConfig, teacher_width: int):
        super().__init__()
        self.decoder = DistillationDecoder(encoder_config, decoder, teacher_width)
        width = self.decoder.width
        grid = encoder_config.image_size // encoder_config.tubelet_size[1]
        self.num_patches = grid * grid
        self.num_frames = encoder_config.num_frames
        self.mask_token = nn.Parameter(torch.empty(width))
        # Decoupled learned position embeddings, as the encoder's: slot t*N + n gets spatial[n] + temporal[t].
        self.spatial_position_embeddings = nn.Parameter(torch.empty(self.num_patches, width))
        self.temporal_position_embeddings = nn.Parameter(torch.empty(self.num_frames, width))
        init_videoprism_style_(self)
        for param in (self.mask_token, self.spatial_position_embeddings, self.temporal_position_embeddings):
            nn.init.normal_(param, std=0.02)

    def position_embeddings(self, num_frames: int) -> torch.Tensor:
        """[T*N, width] decoder position embeddings (the first T temporal rows)."""
        if num_frames > self.num_frames:
            raise ValueError(
                f"the decoder has temporal position embeddings for {self.num_frames} frames, got {num_frames}"
            )
        table = self.temporal_position_embeddings[:num_frames, None, :] + self.spatial_position_embeddings[None]
        return table.reshape(num_frames * self.num_patches, -1)

    def arrange(
        self, visible_tokens: torch.Tensor, visible_positions: torch.Tensor, num_frames: int, permutation: torch.Tensor
    ) -> torch.Tensor:
        """Projected visible tokens + MASK tokens, permuted, before position embeddings.

        visible_tokens: [B, T*K, D] encoder outputs (order t*K + k); visible_positions: [B, K];
        permutation: [B, T*N] (slot i receives the token of position ``permutation[b, i]``).
        Returns [B, T*N, width].
        """
        projected = self.decoder.projector(visible_tokens)  # [B, T*K, W]
        batch, _, width = projected.shape
        length = num_frames * self.num_patches
        full = self.mask_token.to(projected.dtype).expand(batch, length, width).clone()
        index = token_positions(visible_positions, num_frames, self.num_patches)
        full = full.scatter(1, index[..., None].expand(-1, -1, width), projected)  # position order
        return full.gather(1, permutation[..., None].expand(-1, -1, width))  # slot order

    def forward(
        self, visible_tokens: torch.Tensor, visible_positions: torch.Tensor, num_frames: int, permutation: torch.Tensor
    ) -> torch.Tensor:
        """-> [B, T*N, teacher width]: output i predicts the teacher's token at position i."""
        hidden = self.arrange(visible_tokens, visible_positions, num_frames, permutation)
        hidden = hidden + self.position_embeddings(num_frames).to(hidden.dtype)
        return self.decoder.decode(hidden)


class GlobalDistillationHead(nn.Module):
    """Stage 2 global branch: visible tokens -> decoder (no shuffle, no positions) -> MAP -> [B, D]."""

    def __init__(
        self, encoder_config: VideoPrismVisionConfig, decoder: DecoderConfig, teacher_config: VideoPrismVisionConfig
    ):
        super().__init__()
        self.decoder = DistillationDecoder(encoder_config, decoder, teacher_config.hidden_size)
        self.pooler = VideoPrismMultiheadAttentionPoolingHead(_standalone(teacher_config))
        self.pooler_layernorm = VideoPrismLayerNorm(teacher_config.hidden_size, eps=teacher_config.layer_norm_eps)
        init_videoprism_style_(self)

    def forward(self, visible_tokens: torch.Tensor) -> torch.Tensor:
        """[B, T*K, D] -> [B, teacher width] global embedding (not normalised: the loss is a cosine)."""
        hidden = self.decoder(visible_tokens)
        return self.pooler_layernorm(self.pooler(hidden)[0])[:, 0]
