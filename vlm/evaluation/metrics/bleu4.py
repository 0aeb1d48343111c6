"""BLEU-1..4 (Papineni et al., 2002) as computed by the COCO caption toolkit, as an ``evaluate`` metric.

:func:`coco_bleu` reproduces ``pycocoevalcap.bleu.bleu.Bleu(4)``: corpus-level modified n-gram
precisions (each candidate n-gram clipped at its largest count in any one reference), geometric
mean up to order k, and a brevity penalty from the "closest" reference length of each caption
(ties to the shorter one); the toolkit's smoothing constants (1e-15 added to matches, 1e-9 to
counts) are kept so scores match it exactly. ``evaluate.load(".../vlm/metrics/bleu4.py")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import evaluate

from vlm.evaluation.metrics import caption_metric_info, ngram_counts
from vlm.evaluation.metrics.ptb_tokenizer import ptb_tokenize_captions

_DESCRIPTION = "Corpus BLEU-1..4 with closest-reference brevity penalty, identical to the COCO caption toolkit's Bleu."
_CITATION = """@inproceedings{papineni2002bleu,
  title={BLEU: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL}, year={2002}}"""
_INPUTS = """predictions: one caption per clip. references: a list of reference captions per clip.
tokenize: apply the COCO toolkit's PTB tokenisation first (default True).
Returns {"bleu_1", "bleu_2", "bleu_3", "bleu_4"} (corpus level, in [0, 1])."""

_TINY, _SMALL = 1e-15, 1e-9


def coco_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of tokenised captions (whitespace-separated tokens): n floats."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no captions to score")
    guesses, matches = [0] * n, [0] * n
    total_candidate_length, total_reference_length = 0, 0
    for index, (caption, refs) in enumerate(zip(predictions, references)):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"clip {index} needs a non-empty list of reference captions")
        max_reference_counts: dict = {}
        reference_lengths = []
        for ref in refs:
            tokens = ref.split()
            reference_lengths.append(len(tokens))
            for ngram, count in ngram_counts(tokens, n).items():
                max_reference_counts[ngram] = max(max_reference_counts.get(ngram, 0), count)
        tokens = caption.split()
        length = len(tokens)
        total_candidate_length += length
        total_reference_length += min((abs(ref_length - length), ref_length) for ref_length in reference_lengths)[1]
        for order in range(1, n + 1):
            guesses[order - 1] += max(0, length - order + 1)
        for ngram, count in ngram_counts(tokens, n).items():
            matches[len(ngram) - 1] += min(max_reference_counts.get(ngram, 0), count)

    scores = []
    product = 1.0
    for order in range(n):
        product *= float(matches[order] + _TINY) / (guesses[order] + _SMALL)
        scores.append(product ** (1.0 / (order + 1)))
    ratio = (total_candidate_length + _TINY) / (total_reference_length + _SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


class Bleu4(evaluate.Metric):
    """``evaluate`` wrapper of :func:`coco_bleu` with n = 4."""

    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(_DESCRIPTION, _CITATION, _INPUTS)

    def _compute(self, predictions, references, tokenize: bool = True):
        if tokenize:
            predictions, references = ptb_tokenize_captions(predictions, references)
        return {f"bleu_{order + 1}": score for order, score in enumerate(coco_bleu(predictions, references, n=4))}
