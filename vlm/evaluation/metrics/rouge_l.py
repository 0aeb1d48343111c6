"""ROUGE-L (Lin, 2004) as computed by the COCO caption toolkit, as an ``evaluate`` metric.

:func:`coco_rouge_l` reproduces ``pycocoevalcap.rouge.rouge.Rouge``: per clip, the longest common
subsequence with each reference gives a precision and a recall; the best precision and the best
recall (over references, taken separately) combine into an F-measure with beta = 1.2; the corpus
score is the mean over clips. ``evaluate.load(".../vlm/metrics/rouge_l.py")``.
"""

from __future__ import annotations

from collections.abc import Sequence

import evaluate

from vlm.evaluation.metrics import caption_metric_info
from vlm.evaluation.metrics.ptb_tokenizer import ptb_tokenize_captions

_DESCRIPTION = "ROUGE-L F-measure (beta 1.2, best reference), identical to the COCO caption toolkit's Rouge."
_CITATION = """@inproceedings{lin2004rouge,
  title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}"""
_INPUTS = """predictions: one caption per clip. references: a list of reference captions per clip.
tokenize: apply the COCO toolkit's PTB tokenisation first (default True).
Returns {"rouge_l": corpus score in [0, 1], "rouge_l_per_clip": per-clip scores}."""

BETA = 1.2


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for j, other in enumerate(second, 1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def coco_rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """ROUGE-L of tokenised captions (tokens separated by single spaces, as the toolkit splits them).

    Returns (corpus score = mean of the per-clip scores, the per-clip scores).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no captions to score")
    scores = []
    for index, (caption, refs) in enumerate(zip(predictions, references)):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"clip {index} needs a non-empty list of reference captions")
        candidate = caption.split(" ")
        precisions, recalls = [], []
        for ref in refs:
            reference = ref.split(" ")
            common = lcs_length(reference, candidate)
            precisions.append(common / float(len(candidate)))
            recalls.append(common / float(len(reference)))
        precision, recall = max(precisions), max(recalls)
        if precision != 0 and recall != 0:
            scores.append(((1 + BETA**2) * precision * recall) / float(recall + BETA**2 * precision))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores), scores


class RougeL(evaluate.Metric):
    """``evaluate`` wrapper of :func:`coco_rouge_l`."""

    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(_DESCRIPTION, _CITATION, _INPUTS)

    def _compute(self, predictions, references, tokenize: bool = True):
        if tokenize:
            predictions, references = ptb_tokenize_captions(predictions, references)
        score, per_clip = coco_rouge_l(predictions, references)
        return {"rouge_l": score, "rouge_l_per_clip": per_clip}
