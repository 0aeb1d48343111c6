"""Moments found by text: spans of a long video ranked by the video-text model's similarity to a text,
as in the paper's zero-shot temporal localisation (Charades-STA: R@1 at IoU >= 0.5).

Scoring: each window's cosine similarity to the text. Spans: the best window not yet in a span starts one;
a neighbouring window joins it while its score is at least the span's peak minus half the gap between that
peak and the video's median window score (so windows that match together form one span, and a flat
stretch of unrelated windows does not). Spans are ranked by their peak score, best first, and never overlap.

The windows are the video-text model's (a quarter of the glue's window: 2 s for the default 8 s), read
once and cached, so finding a moment decodes nothing. A text may be several phrasings of one thing; their
embeddings are averaged (prompt ensembling, as the paper does for zero-shot classification).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vlm.long_video.reading import LongVideo


@dataclass(frozen=True)
class Moment:
    """A span of the video that matches a text: start, end in seconds; score: peak cosine similarity."""

    start: float
    end: float
    score: float

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "score": round(self.score, 4)}


def join_spans(scores: np.ndarray, top_k: int, floor: float | None = None) -> list[tuple[int, int, float]]:
    """Runs of adjacent positions by the joining rule (module docstring): (first, last, peak) per span, best
    peak first, at most ``top_k``. ``floor``: the median score the margin is measured against (default: the
    median of ``scores``)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores must be a non-empty vector, got shape {scores.shape}")
    median = float(np.median(scores)) if floor is None else float(floor)
    taken = np.zeros(len(scores), dtype=bool)
    spans = []
    for peak_index in np.argsort(-scores, kind="stable"):
        if len(spans) == top_k:
            break
        if taken[peak_index]:
            continue
        peak = float(scores[peak_index])
        threshold = peak - 0.5 * max(peak - median, 0.0)
        first = last = int(peak_index)
        while first > 0 and not taken[first - 1] and scores[first - 1] >= threshold:
            first -= 1
        while last < len(scores) - 1 and not taken[last + 1] and scores[last + 1] >= threshold:
            last += 1
        taken[first : last + 1] = True
        spans.append((first, last, peak))
    return spans


def text_embedding(video_text_model, text: str | Sequence[str]) -> torch.Tensor:
    """The L2-normalised mean embedding of one text or several phrasings of it: [D]."""
    texts = [text] if isinstance(text, str) else list(text)
    return torch.nn.functional.normalize(video_text_model.embed_texts(texts).mean(dim=0), dim=-1)


def window_scores(video_text_model, video: LongVideo, text: str | Sequence[str]) -> torch.Tensor:
    """Cosine similarity of each video-text window of ``video`` to ``text`` (or its phrasings): [N']."""
    if video.embeddings is None:
        raise ValueError("this long video was read without the video-text model")
    return video.embeddings @ text_embedding(video_text_model, text)


def find_moments(video_text_model, video: LongVideo, text: str | Sequence[str], top_k: int = 5) -> list[Moment]:
    """The spans of ``video`` that best match ``text`` (or the mean of its phrasings), best first (at most
    ``top_k``)."""
    return moments_from_scores(video, window_scores(video_text_model, video, text).numpy(), top_k)


def moments_from_scores(video: LongVideo, scores: np.ndarray, top_k: int = 5) -> list[Moment]:
    """:func:`find_moments` from the video-text windows' scores [N'] already computed."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    spans = video.text_spans
    return [
        Moment(float(spans[first, 0]), float(spans[last, 1]), peak) for first, last, peak in join_spans(scores, top_k)
    ]
