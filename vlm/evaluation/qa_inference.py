"""Running the model over video QA examples: open answers and candidate scores, in batches.

Questions are grouped by video (a file and a window): each video is decoded and encoded once
(``encoder.video.clips.iter_decoded_batches`` and the frozen encoder) or its tokens are read from a
feature cache, then its questions go through the model in batches. A question whose video is
unreadable gets no answer (None) or a row of NaN scores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from encoder.common.errors import UsageError
from encoder.video.clips import Clip, iter_decoded_batches
from encoder.videoprism.features import encode_clips
from vlm.evaluation.data import QAExample
from vlm.inference.scoring import candidate_token_ids, check_candidates


@dataclass(frozen=True)
class _VideoKey:
    """A video file and window: the questions with the same key share one decode and encode."""

    video: str
    start: float | None
    end: float | None


def _video_key(example: QAExample) -> _VideoKey:
    return _VideoKey(example.video, example.start, example.end)


def _video_token_batches(
    assistant, keys: Sequence[_VideoKey], batch_size: int, features=None, num_workers: int = 2
) -> Iterator[list[tuple[_VideoKey, torch.Tensor | None]]]:
    """Per batch of videos: (key, encoder tokens [M, D] or None when unreadable). Tokens come from
    a feature cache (looked up by path) or from decoding + the frozen encoder."""
    if features is not None:
        for start in range(0, len(keys), batch_size):
            batch = keys[start : start + batch_size]
            yield [(key, features.get(key.video).float() if key.video in features else None) for key in batch]
        return
    if assistant.model.encoder is None:
        raise UsageError("this model has no video encoder; give a feature cache (--features) instead")
    clips = [Clip(str(index), key.video, key.start, key.end) for index, key in enumerate(keys)]
    for items in iter_decoded_batches(
        clips, assistant.config.num_frames, assistant.config.frame_size, batch_size, num_workers
    ):
        good = [frames for _, frames, _ in items if frames is not None]
        tokens = iter(encode_clips(assistant.model.encoder, np.stack(good)) if good else [])
        yield [(keys[int(clip.id)], next(tokens) if frames is not None else None) for clip, frames, _ in items]


def _question_batches(
    assistant,
    examples: Sequence[QAExample],
    batch_size: int,
    features,
    num_workers: int,
    progress: bool,
    description: str,
) -> Iterator[tuple[list[int], torch.Tensor | None]]:
    """(question indices, their videos' tokens [b, M, D]) in batches of up to ``batch_size``
    questions; questions of unreadable videos come with None."""
    by_video: dict[_VideoKey, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_video[_video_key(example)].append(index)
    bar = tqdm(total=len(examples), unit="question", desc=description, disable=not progress)
    try:
        for video_batch in _video_token_batches(assistant, list(by_video), batch_size, features, num_workers):
            unreadable = [i for key, tokens in video_batch if tokens is None for i in by_video[key]]
            if unreadable:
                yield unreadable, None
            rows = [(i, tokens) for key, tokens in video_batch if tokens is not None for i in by_video[key]]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                yield [i for i, _ in chunk], torch.stack([tokens for _, tokens in chunk])
            bar.update(len(unreadable) + len(rows))
    finally:
        bar.close()


def predict_open(
    assistant,
    examples: Sequence[QAExample],
    shots=(),
    batch_size: int = 8,
    max_new_tokens: int = 32,
    features=None,
    num_workers: int = 2,
    progress: bool = True,
) -> list[str | None]:
    """Greedy open-vocabulary answers, one per example (None: its video is unreadable)."""
    predictions: list[str | None] = [None] * len(examples)
    for indices, tokens in _question_batches(
        assistant, examples, batch_size, features, num_workers, progress, "answering"
    ):
        if tokens is None:
            continue
        answers = assistant.answer(
            [examples[i].question for i in indices], video_tokens=tokens, shots=shots, max_new_tokens=max_new_tokens
        )
        for i, answer in zip(indices, answers):
            predictions[i] = answer
    return predictions


def score_candidates(
    assistant,
    examples: Sequence[QAExample],
    candidates: Sequence[str],
    shots=(),
    batch_size: int = 8,
    features=None,
    num_workers: int = 2,
    progress: bool = True,
) -> np.ndarray:
    """Log-likelihood of every candidate for every example: float32 [N, C] (NaN rows: unreadable
    videos). One-token candidates are scored for a batch of questions in one forward; otherwise
    each question goes through ``VideoAssistant.score_answers`` (prefix KV-cache reuse)."""
    candidates = check_candidates(candidates)
    ids = candidate_token_ids(assistant.tokenizer, candidates)
    one_token = all(len(tokens) == 1 for tokens in ids)
    scores = np.full((len(examples), len(candidates)), np.nan, dtype=np.float32)
    position = {candidate: column for column, candidate in enumerate(candidates)}
    for indices, tokens in _question_batches(
        assistant, examples, batch_size, features, num_workers, progress, "scoring"
    ):
        if tokens is None:
            continue
        if one_token:
            questions = [examples[i].question for i in indices]
            scores[indices] = assistant.one_token_log_likelihoods(questions, tokens, [t[0] for t in ids], shots).numpy()
            continue
        for row, i in enumerate(indices):
            ranked = assistant.score_answers(
                examples[i].question, candidates, video_tokens=tokens[row : row + 1], shots=shots
            )
            for scored in ranked:
                scores[i, position[scored.answer]] = scored.log_likelihood
    return scores
