"""Retrieval and zero-shot classification metrics.

Retrieval follows the MSRVTT / VATEX protocols: every caption is a text->video query whose one
correct video is the clip it describes; a video->text query is correct at rank r when the best
ranked of *its* captions sits at r among all captions. Ranks are 1-based and count only items
scored strictly higher than the correct one (a tie with a wrong item does not push it down).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

RECALL_AT = (1, 5, 10)


def ranks_of_targets(similarity: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """similarity [Q, C], targets [Q] (column of each query's correct item) -> 1-based ranks [Q]."""
    correct = similarity.gather(1, targets[:, None])  # [Q, 1]
    return (similarity > correct).sum(dim=1) + 1


def text_to_video_ranks(similarity: torch.Tensor, text_video: Sequence[int]) -> torch.Tensor:
    """similarity [T, V] (texts x videos), text_video[t] = the video of text t -> ranks [T]."""
    return ranks_of_targets(similarity, torch.as_tensor(list(text_video), dtype=torch.long))


def video_to_text_ranks(similarity: torch.Tensor, text_video: Sequence[int]) -> torch.Tensor:
    """similarity [T, V], text_video [T] -> for each video the rank of its best-ranked caption [V]."""
    owner = torch.as_tensor(list(text_video), dtype=torch.long)
    by_video = similarity.T  # [V, T]
    ranks = torch.empty(by_video.shape[0], dtype=torch.long)
    for video in range(by_video.shape[0]):
        own = by_video[video, owner == video]
        if not len(own):
            raise ValueError(f"video {video} has no caption")
        best = own.max()
        ranks[video] = int((by_video[video] > best).sum()) + 1
    return ranks


def recall_summary(ranks: torch.Tensor, recall_at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """ranks [Q] -> {"R@1": %, "R@5": %, "R@10": %, "median_rank", "mean_rank", "queries"}."""
    ranks = ranks.double()
    summary = {f"R@{k}": float((ranks <= k).double().mean() * 100) for k in recall_at}
    summary["median_rank"] = float(np.median(ranks.numpy()))
    summary["mean_rank"] = float(ranks.mean())
    summary["queries"] = len(ranks)
    return summary


def retrieval_metrics(similarity: torch.Tensor, text_video: Sequence[int]) -> dict[str, dict[str, float]]:
    """Both directions: {"text_to_video": summary, "video_to_text": summary}."""
    return {
        "text_to_video": recall_summary(text_to_video_ranks(similarity, text_video)),
        "video_to_text": recall_summary(video_to_text_ranks(similarity, text_video)),
    }


def top_k_accuracy(probabilities: torch.Tensor, targets: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """probabilities [N, L], targets [N] -> {"top1": %, "top5": %} (k capped at L)."""
    ranks = ranks_of_targets(probabilities, torch.as_tensor(list(targets), dtype=torch.long))
    return {f"top{k}": float((ranks <= k).double().mean() * 100) for k in ks}
