"""Frozen-feature MAP probes: how much of a label a frozen encoder's tokens carry.

A probe is a multihead attention-pooling (MAP) head trained on frozen encoder tokens, as in the
paper's frozen-backbone evaluations: one learned query cross-attends to the tokens, then LayerNorm,
a residual MLP, LayerNorm and a linear classifier. Only the probe trains (AdamW, warm-up then cosine
decay); the tokens come from ``encoder.videoprism.features.encode_clips`` or a ``FeatureCache`` and are never
touched by a gradient.

    accuracy = probe_accuracy(train_tokens, train_labels, test_tokens, test_labels, ProbeConfig(), seed=0)

Tokens are ``[B, M, D]`` (M = T*N encoder tokens of D channels), labels ``[B]`` integers in
``[0, num_classes)``. Everything is held in memory: meant for small encoders and a few thousand clips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from encoder.common.configs import config_from_dict, config_to_dict, save_config
from encoder.training.threads import torch_threads


@dataclass
class ProbeConfig:
    """Probe architecture and training. ``num_heads`` must divide the token width D."""

    num_heads: int = 4
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * D
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1  # of all steps, then cosine decay to 0
    dropout: float = 0.0
    standardize: bool = True  # per-channel mean/std of the TRAIN tokens applied to all tokens
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("num_heads", "epochs", "batch_size", "eval_batch_size"):
            if (
                isinstance(getattr(self, name), bool)
                or not isinstance(getattr(self, name), int)
                or getattr(self, name) < 1
            ):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.mlp_ratio > 0 or not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError("need mlp_ratio > 0, learning_rate > 0 and weight_decay >= 0")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.dropout < 1:
            raise ValueError("warmup_fraction and dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ProbeConfig":
        return config_from_dict(cls, values)

    def save(self, path: str | os.PathLike) -> None:
        save_config(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProbeConfig":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


class SingleQueryAttention(nn.Module):
    """Multihead cross-attention of ONE learned query to the tokens, computed cheaply.

    The same function as ``nn.MultiheadAttention(query, tokens, tokens)`` with its q/k/v/out
    projections (``load_from_multihead`` copies one in), but the key and value projections are
    folded onto the query side: per head h, the scores are ``tokens @ (W_k[h]^T q_h) / sqrt(d)`` (the
    key bias adds a constant per head, which the softmax ignores) and the output is
    ``W_v[h] (sum_m a_mh tokens_m) + b_v[h]``. That costs O(B M D H) instead of O(B M D^2).

    tokens [B, M, D] -> attended [B, D].
    """

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide the token width {width}")
        self.width, self.num_heads, self.head_width = width, num_heads, width // num_heads
        self.query = nn.Parameter(torch.randn(width) * width**-0.5)
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        heads, head_width, width = self.num_heads, self.head_width, self.width
        query = self.q_proj(self.query).view(heads, head_width)  # [H, d]
        key_weight = self.k_proj.weight.view(heads, head_width, width)  # [H, d, D]
        folded = torch.einsum("hd,hdk->kh", query, key_weight) * head_width**-0.5  # [D, H]
        weights = self.dropout(torch.softmax(tokens @ folded, dim=1))  # [B, M, H], over the M tokens
        pooled = torch.einsum("bmh,bmk->bhk", weights, tokens)  # [B, H, D]
        value_weight = self.v_proj.weight.view(heads, head_width, width)  # [H, d, D]
        values = torch.einsum("bhk,hdk->bhd", pooled, value_weight) + self.v_proj.bias.view(heads, head_width)
        return self.out_proj(values.reshape(tokens.shape[0], width))  # [B, D]

    @torch.no_grad()
    def load_from_multihead(self, attention: nn.MultiheadAttention, query: torch.Tensor) -> None:
        """Copy the weights of a batch-first ``nn.MultiheadAttention`` and its query ``[D]``."""
        q_weight, k_weight, v_weight = attention.in_proj_weight.chunk(3)
        q_bias, k_bias, v_bias = attention.in_proj_bias.chunk(3)
        for projection, weight, bias in (
            (self.q_proj, q_weight, q_bias),
            (self.k_proj, k_weight, k_bias),
            (self.v_proj, v_weight, v_bias),
        ):
            projection.weight.copy_(weight)
            projection.bias.copy_(bias)
        self.out_proj.weight.copy_(attention.out_proj.weight)
        self.out_proj.bias.copy_(attention.out_proj.bias)
        self.query.copy_(query.reshape(-1))


class MAPProbe(nn.Module):
    """MAP head + linear classifier over frozen tokens.

    tokens [B, M, D] -> (standardise) -> a learned query attends to the tokens [B, D] -> LayerNorm
    -> + MLP -> LayerNorm -> logits [B, num_classes].
    """

    def __init__(self, width: int, num_classes: int, config: ProbeConfig):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a probe needs at least 2 classes, got {num_classes}")
        hidden = max(1, round(config.mlp_ratio * width))
        self.register_buffer("token_mean", torch.zeros(width))
        self.register_buffer("token_std", torch.ones(width))
        self.attention = SingleQueryAttention(width, config.num_heads, config.dropout)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, width)
        )
        self.head_norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, M, D] -> pooled features [B, D] (before the classifier)."""
        normed = self.norm(self.attention((tokens - self.token_mean) / self.token_std))
        return self.head_norm(normed + self.mlp(normed))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, M, D] -> logits [B, num_classes]."""
        return self.classifier(self.pooled(tokens))


def _as_tokens(tokens: torch.Tensor | np.ndarray | Sequence, what: str) -> torch.Tensor:
    if isinstance(tokens, Sequence) and not isinstance(tokens, (torch.Tensor, np.ndarray)):
        tokens = torch.stack([torch.as_tensor(t) for t in tokens])
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 3 or tokens.shape[0] == 0:
        raise ValueError(f"{what} must have shape [B, M, D] with B > 0, got {tuple(tokens.shape)}")
    return tokens.float()


def _as_labels(labels, count: int, what: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels))
    if labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(f"{what} must have shape [{count}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or (labels < 0).any():
        raise ValueError(f"{what} must be non-negative integers")
    return labels.long()


def train_map_probe(
    tokens: torch.Tensor | np.ndarray,
    labels,
    num_classes: int | None = None,
    config: ProbeConfig | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    num_threads: int | None = None,
) -> MAPProbe:
    """Train a :class:`MAPProbe` on frozen tokens.

    tokens: [B, M, D] float (kept on the CPU; mini-batches move to ``device``).
    labels: [B] ints in [0, num_classes) (default num_classes: max label + 1).
    Deterministic for ``seed`` on a given device (the global torch RNG is left as it was).
    num_threads: torch CPU threads while training (restored afterwards); None leaves them as they
        are. A probe's operations are small: on a busy few-core machine 1 thread is much faster.
    Returns the trained probe in eval mode, on ``device``.
    """
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    config = config or ProbeConfig()
    tokens = _as_tokens(tokens, "train tokens")
    labels = _as_labels(labels, tokens.shape[0], "train labels")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.max()) >= num_classes:
        raise ValueError(f"train labels go up to {int(labels.max())}, beyond num_classes={num_classes}")
    device = torch.device(device or "cpu")
    steps_per_epoch = -(-tokens.shape[0] // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch_threads(num_threads):
        torch.manual_seed(seed)
        probe = MAPProbe(tokens.shape[-1], num_classes, config).to(device)
        if config.standardize:
            probe.token_mean.copy_(tokens.mean(dim=(0, 1)))
            probe.token_std.copy_(tokens.std(dim=(0, 1)).clamp_min(1e-6))
        optimizer = torch.optim.AdamW(probe.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        schedule = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_fraction * total_steps), total_steps)
        order_rng = torch.Generator().manual_seed(seed)
        probe.train()
        for _ in tqdm(range(config.epochs), desc="probe", unit="epoch", disable=not progress):
            order = torch.randperm(tokens.shape[0], generator=order_rng)
            for start in range(0, tokens.shape[0], config.batch_size):
                batch = order[start : start + config.batch_size]
                logits = probe(tokens[batch].to(device, non_blocking=True))
                loss = nn.functional.cross_entropy(logits, labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return probe.eval()


@torch.inference_mode()
def probe_predictions(probe: MAPProbe, tokens: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Predicted classes [B] (int64, CPU) of tokens [B, M, D]."""
    tokens = _as_tokens(tokens, "tokens")
    device = next(probe.parameters()).device
    probe.eval()
    return torch.cat(
        [
            probe(tokens[start : start + batch_size].to(device)).argmax(-1).cpu()
            for start in range(0, tokens.shape[0], batch_size)
        ]
    )


def probe_accuracy(
    train_tokens: torch.Tensor | np.ndarray,
    train_labels,
    test_tokens: torch.Tensor | np.ndarray,
    test_labels,
    config: ProbeConfig | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    num_threads: int | None = None,
) -> float:
    """Accuracy on (test_tokens, test_labels) of a MAP probe trained on (train_tokens, train_labels).

    train_tokens [B, M, D], train_labels [B]; test_tokens [B', M, D], test_labels [B'].
    ``num_threads``: see :func:`train_map_probe` (also used for the test predictions).
    """
    config = config or ProbeConfig()
    test_tokens = _as_tokens(test_tokens, "test tokens")
    test_labels = _as_labels(test_labels, test_tokens.shape[0], "test labels")
    train_labels_t = torch.as_tensor(np.asarray(train_labels))
    if num_classes is None:
        num_classes = int(max(int(train_labels_t.max()), int(test_labels.max()))) + 1
    probe = train_map_probe(
        train_tokens,
        train_labels,
        num_classes,
        config,
        seed=seed,
        device=device,
        progress=progress,
        num_threads=num_threads,
    )
    if probe.token_mean.shape[0] != test_tokens.shape[-1]:
        raise ValueError(f"test tokens have width {test_tokens.shape[-1]}, train tokens {probe.token_mean.shape[0]}")
    with torch_threads(num_threads):
        predictions = probe_predictions(probe, test_tokens, config.eval_batch_size)
    return float((predictions == test_labels).float().mean())


def cached_tokens(cache, videos: Sequence[str]) -> torch.Tensor:
    """Stack the tokens of ``videos`` from an ``encoder.videoprism.features.FeatureCache``: float32 [B, M, D]."""
    missing = [video for video in videos if video not in cache]
    if missing:
        raise KeyError(f"{len(missing)} videos are not in the feature cache {cache.cache_dir}, e.g. {missing[0]}")
    return torch.stack([cache.get(video).float() for video in videos])
