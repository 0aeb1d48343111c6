"""The Perceiver Resampler that turns encoder tokens into a fixed-length soft prompt for the LLM.

As in the VideoPrism paper (appendix G), which changes Flamingo's resampler in two ways:

* the latents (queries) and the video tokens (keys/values) have SEPARATE LayerNorms;
* the keys/values come from the video tokens only: the latents are not concatenated into them,
  because the video width (D) and the LLM width (H) differ.

One layer, for ``depth`` layers::

    latents = latents + CrossAttention(q=LN_q(latents), kv=LN_kv(video_tokens))   # skip connection
    latents = latents + FeedForward(LN_ff(latents))

The latents live at the LLM's width H from the start, so the output needs no projection.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from encoder.common.configs import config_from_dict, config_to_dict


@dataclass
class ResamplerConfig:
    """Shape of a Perceiver Resampler.

    video_width: D, width of the encoder tokens (keys/values input).
    llm_width: H, width of the output tokens (the LLM's hidden size); the latents have this width.
    num_latents: L, number of output tokens (256 in the paper).
    depth: number of (cross-attention + feed-forward) layers (1 in the paper).
    num_heads: attention heads; ``attention_width`` must divide by it.
    attention_width: inner width of queries/keys/values; None = ``llm_width``.
    ffn_multiplier: hidden width of the feed-forward block = ``ffn_multiplier * llm_width``.
    output_norm: apply a final LayerNorm to the output tokens (Flamingo does; the paper does not say).
    layer_norm_eps: epsilon of every LayerNorm.
    latent_init_std: standard deviation of the initial latents.
    """

    video_width: int
    llm_width: int
    num_latents: int = 256
    depth: int = 1
    num_heads: int = 8
    attention_width: int | None = None
    ffn_multiplier: int = 4
    output_norm: bool = False
    layer_norm_eps: float = 1e-5
    latent_init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("video_width", "llm_width", "num_latents", "depth", "num_heads", "ffn_multiplier"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ResamplerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.inner_width % self.num_heads:
            raise ValueError(f"attention width {self.inner_width} is not divisible by num_heads={self.num_heads}")

    @property
    def inner_width(self) -> int:
        return self.attention_width or self.llm_width

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ResamplerConfig":
        return config_from_dict(cls, values)


class ResamplerCrossAttention(nn.Module):
    """Latents attend to video tokens (keys/values from the video tokens only)."""

    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.query_norm = nn.LayerNorm(config.llm_width, eps=config.layer_norm_eps)
        self.video_norm = nn.LayerNorm(config.video_width, eps=config.layer_norm_eps)
        self.query = nn.Linear(config.llm_width, config.inner_width, bias=False)
        self.key = nn.Linear(config.video_width, config.inner_width, bias=False)
        self.value = nn.Linear(config.video_width, config.inner_width, bias=False)
        self.out = nn.Linear(config.inner_width, config.llm_width, bias=False)

    def forward(
        self, latents: torch.Tensor, video_tokens: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """latents [B, L, H], video_tokens [B, M, D], video_mask [B, M] bool (True = real token)
        -> attended features [B, L, H] (not yet added to the latents)."""
        batch, num_latents, _ = latents.shape
        num_tokens = video_tokens.shape[1]
        queries = self.query(self.query_norm(latents))  # [B, L, I]
        normed_video = self.video_norm(video_tokens)
        keys = self.key(normed_video)  # [B, M, I]
        values = self.value(normed_video)  # [B, M, I]
        head_width = queries.shape[-1] // self.num_heads
        # [B, n, L|M, I/n]
        queries = queries.view(batch, num_latents, self.num_heads, head_width).transpose(1, 2)
        keys = keys.view(batch, num_tokens, self.num_heads, head_width).transpose(1, 2)
        values = values.view(batch, num_tokens, self.num_heads, head_width).transpose(1, 2)
        attn_mask = None if video_mask is None else video_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, M]
        attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=attn_mask)  # [B, n, L, I/n]
        attended = attended.transpose(1, 2).reshape(batch, num_latents, -1)  # [B, L, I]
        return self.out(attended)


class ResamplerFeedForward(nn.Module):
    """Pre-LN MLP at the LLM width: [B, L, H] -> [B, L, H]."""

    def __init__(self, config: ResamplerConfig):
        super().__init__()
        hidden = config.ffn_multiplier * config.llm_width
        self.norm = nn.LayerNorm(config.llm_width, eps=config.layer_norm_eps)
        self.up = nn.Linear(config.llm_width, hidden, bias=False)
        self.down = nn.Linear(hidden, config.llm_width, bias=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(self.norm(latents))))


class ResamplerLayer(nn.Module):
    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.cross_attention = ResamplerCrossAttention(config)
        self.feed_forward = ResamplerFeedForward(config)

    def forward(
        self, latents: torch.Tensor, video_tokens: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """latents [B, L, H], video_tokens [B, M, D] -> latents [B, L, H]."""
        latents = latents + self.cross_attention(latents, video_tokens, video_mask)  # skip connection
        return latents + self.feed_forward(latents)


class PerceiverResampler(nn.Module):
    """Learned latents cross-attend to encoder tokens: [B, M, D] -> soft prompt [B, L, H]."""

    WEIGHTS_FILE = "resampler.safetensors"
    CONFIG_FILE = "resampler_config.json"

    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.config = config
        self.latents = nn.Parameter(torch.randn(config.num_latents, config.llm_width) * config.latent_init_std)
        self.layers = nn.ModuleList(ResamplerLayer(config) for _ in range(config.depth))
        self.output_norm = (
            nn.LayerNorm(config.llm_width, eps=config.layer_norm_eps) if config.output_norm else nn.Identity()
        )

    def forward(self, video_tokens: torch.Tensor, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """video_tokens [B, M, D] (M = T*N encoder tokens), optional video_mask [B, M] (True/1 = real token)
        -> resampled tokens [B, L, H] in the resampler's dtype."""
        if video_tokens.ndim != 3 or video_tokens.shape[-1] != self.config.video_width:
            raise ValueError(
                f"video tokens must have shape [B, M, {self.config.video_width}], got {tuple(video_tokens.shape)}"
            )
        video_tokens = video_tokens.to(self.latents.dtype)
        latents = self.latents.unsqueeze(0).expand(video_tokens.shape[0], -1, -1)  # [B, L, H]
        for layer in self.layers:
            latents = layer(latents, video_tokens, video_mask)
        return self.output_norm(latents)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write resampler_config.json and resampler.safetensors into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / self.WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, config: ResamplerConfig | None = None
    ) -> "PerceiverResampler":
        """Load from ``directory`` (safetensors only). ``config`` overrides resampler_config.json."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if config is None:
            config = ResamplerConfig.from_dict(json.loads((directory / cls.CONFIG_FILE).read_text()))
        weights = directory / cls.WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"no resampler weights at {weights}")
        resampler = cls(config)
        state = load_file(str(weights))
        expected = {name: tuple(t.shape) for name, t in resampler.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in state.items()}
        if expected != found:
            mismatched = sorted(name for name in set(expected) | set(found) if expected.get(name) != found.get(name))
            raise ValueError(
                f"{weights} does not match its resampler config: tensors {mismatched[:5]} have shapes "
                f"{[found.get(n) for n in mismatched[:5]]}, the config expects {[expected.get(n) for n in mismatched[:5]]}"
            )
        resampler.load_state_dict(state)
        return resampler
