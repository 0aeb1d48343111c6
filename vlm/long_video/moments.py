"""Moments found by text: spans of a long video ranked by the video-text model's similarity to a text,
as in the paper's zero-shot temporal localisation (Charades-STA: R@1 at IoU >= 0.5).

Scoring: each window's cosine similarity to the text. Spans: the best window not yet in a span starts one;
a neighbouring window joins it while its score is at least the span's peak minus half the gap between that
peak and the video's median window score (so windows that match together form one span, and a flat
stretch of unrelated windows does not). Spans are ranked by their peak score, best first, and never overlap.

Refinement (``refine=True``): a span is made of whole windows; around the best ones, sub-windows of a
quarter window (decoded again, embedded by the same model) narrow it to the part that matches, by the same
joining rule at the finer step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoder.video.decode import load_clip
from vlm.long_video.reading import LongVideo

REFINE_FRACTION = 0.25  # sub-window length as a share of the window


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


def window_scores(video_text_model, video: LongVideo, text: str) -> torch.Tensor:
    """Cosine similarity of each window of ``video`` (read with the video-text model) to ``text``: [N]."""
    if video.embeddings is None:
        raise ValueError("this long video was read without the video-text model")
    query = video_text_model.embed_texts([text])[0]  # [D]
    return video.embeddings @ query


def find_moments(
    video_text_model, video: LongVideo, text: str, top_k: int = 5, refine: bool = True, batch_size: int = 8
) -> list[Moment]:
    """The spans of ``video`` that best match ``text``, best first (at most ``top_k``)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scores = window_scores(video_text_model, video, text).numpy()
    moments = [
        Moment(float(video.spans[first, 0]), float(video.spans[last, 1]), peak)
        for first, last, peak in join_spans(scores, top_k)
    ]
    if refine:
        query = video_text_model.embed_texts([text])[0]
        median = float(np.median(scores))
        moments = [_refine(video_text_model, video, m, query, median, batch_size) for m in moments]
        moments.sort(key=lambda moment: -moment.score)
    return moments


def _refine(
    video_text_model, video: LongVideo, moment: Moment, query: torch.Tensor, median: float, batch_size: int
) -> Moment:
    """``moment`` narrowed to the sub-windows that match (module docstring)."""
    step = video.window_s * REFINE_FRACTION
    starts = np.arange(moment.start, moment.end - step / 2, step)
    if len(starts) < 2:
        return moment
    spans = [(float(s), float(min(s + step, moment.end))) for s in starts]
    scores = _span_scores(video_text_model, video.path, spans, query, batch_size)
    first, last, peak = join_spans(scores, 1, floor=median)[0]
    return Moment(spans[first][0], spans[last][1], max(peak, moment.score))


def _span_scores(video_text_model, path: str | os.PathLike, spans, query: torch.Tensor, batch_size: int) -> np.ndarray:
    """Similarity of ``query`` [D] to each span of ``path``, each decoded on its own: [len(spans)]."""
    rows = []
    for start in range(0, len(spans), batch_size):
        clips = np.stack(
            [
                load_clip(Path(path), video_text_model.num_frames, video_text_model.frame_size, begin, end)
                for begin, end in spans[start : start + batch_size]
            ]
        )
        rows.append(video_text_model.embed_clips(clips) @ query)
    return torch.cat(rows).numpy()
