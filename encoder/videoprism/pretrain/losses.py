"""Pretraining losses: symmetric contrastive cross-entropy (stage 1, LiT) and cosine distance (stage 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LogitScale(nn.Module):
    """Learnable contrastive temperature, stored as ``log(1 / temperature)`` as in CLIP.

    ``forward()`` returns the scale ``1 / temperature`` clamped to ``max_scale`` (CLIP's 100) so the
    logits cannot blow up. transformers' ``VideoPrismClipModel`` has no temperature parameter, so
    this module is saved beside the model (``contrastive_temperature.safetensors``).
    """

    def __init__(self, initial_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        if not 0.0 < initial_temperature:
            raise ValueError(f"temperature must be positive, got {initial_temperature}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / initial_temperature)))
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.forward().detach())


def contrastive_loss(
    video_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    negative_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy over the in-batch similarity matrix (CLIP / ALIGN / VideoPrism stage 1).

    video_embeds, text_embeds: [B, D], L2-normalised; row i of each is a matching pair.
    logit_scale: scalar 1 / temperature. Returns the mean of the video->text and text->video
    cross-entropies of ``logit_scale * video_embeds @ text_embeds.T`` against the diagonal.
    negative_text_embeds: [N, D] extra captions that match no video of the batch (hard negatives,
        NegCLIP): they join the candidates of the video->text term only, whose logits become
        [B, B + N]; the text->video term is unchanged.
    """
    if video_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"video {tuple(video_embeds.shape)} and text {tuple(text_embeds.shape)} embeddings differ in shape"
        )
    logits = logit_scale * video_embeds.float() @ text_embeds.float().T  # [B, B]
    targets = torch.arange(logits.shape[0], device=logits.device)
    text_to_video = F.cross_entropy(logits.T, targets)
    if negative_text_embeds is not None and len(negative_text_embeds):
        if negative_text_embeds.shape[1:] != text_embeds.shape[1:]:
            raise ValueError(
                f"negative text embeddings {tuple(negative_text_embeds.shape)} do not match {tuple(text_embeds.shape)}"
            )
        negatives = logit_scale * video_embeds.float() @ negative_text_embeds.float().T  # [B, N]
        logits = torch.cat([logits, negatives], dim=1)
    return 0.5 * (F.cross_entropy(logits, targets) + text_to_video)


def cosine_distance(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(prediction, target) over all leading positions. [..., D] x [..., D] -> scalar."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    return (1.0 - F.cosine_similarity(predictions.float(), targets.float(), dim=-1, eps=1e-6)).mean()
