"""CIDEr-D (Vedantam et al., 2015) as computed by the COCO caption toolkit, as an ``evaluate`` metric.

Load it offline by path::

    import evaluate
    cider = evaluate.load("/path/to/vlm/metrics/cider_d.py")   # or vlm.evaluation.metrics.load_metric("cider_d")
    cider.compute(predictions=["a man plays a guitar"], references=[["a man is playing guitar", ...]])

:func:`cider_d` reproduces ``pycocoevalcap.cider.cider.Cider`` (which, despite its name, is
CIDEr-D): n-grams n = 1..4; tf-idf vectors with document frequencies counted over the references
of the evaluated set (log of the number of clips as the idf numerator); clipped cosine similarity
(the candidate's weight capped at the reference's); a Gaussian length penalty
exp(-delta^2 / (2 sigma^2)) with sigma = 6; mean over n-gram orders, averaged over references,
times 10. Like the toolkit, the "length" in the penalty counts the caption's BIGRAMS (the
toolkit's ``if n == 1`` indexes n-gram orders from 0), so scores match it exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import evaluate

from vlm.evaluation.metrics import caption_metric_info, ngram_counts
from vlm.evaluation.metrics.ptb_tokenizer import ptb_tokenize_captions

_DESCRIPTION = "CIDEr-D consensus-based caption score, identical to the COCO caption toolkit's Cider."
_CITATION = """@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR}, year={2015}}"""
_INPUTS = """predictions: one caption per clip. references: a list of reference captions per clip.
tokenize: apply the COCO toolkit's PTB tokenisation first (default True; False for pre-tokenised
text split on whitespace). n: largest n-gram order (4). sigma: length-penalty width (6.0).
Returns {"cider_d": corpus score, "cider_d_per_clip": per-clip scores}."""


def cider_d(
    predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D of tokenised captions (tokens separated by whitespace).

    predictions: P captions; references: P non-empty lists of reference captions.
    Returns (corpus score = mean of the per-clip scores, the P per-clip scores).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no captions to score")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"clip {index} needs a non-empty list of reference captions")
    candidate_counts = [ngram_counts(caption.split(), n) for caption in predictions]
    reference_counts = [[ngram_counts(ref.split(), n) for ref in refs] for refs in references]

    document_frequency: Counter = Counter()
    for refs in reference_counts:
        document_frequency.update({ngram for ref in refs for ngram in ref})
    log_num_clips = math.log(float(len(reference_counts)))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vectors: list[dict] = [{} for _ in range(n)]
        norms = [0.0] * n
        length = 0
        for ngram, term_frequency in counts.items():
            order = len(ngram) - 1
            weight = float(term_frequency) * (log_num_clips - math.log(max(1.0, document_frequency[ngram])))
            vectors[order][ngram] = weight
            norms[order] += weight**2
            if order == 1:  # the toolkit's length: bigram count (see the module docstring)
                length += term_frequency
        return vectors, [math.sqrt(value) for value in norms], length

    scores = []
    for candidate, refs in zip(candidate_counts, reference_counts):
        vector, norm, length = tfidf(candidate)
        total = [0.0] * n
        for ref in refs:
            ref_vector, ref_norm, ref_length = tfidf(ref)
            penalty = math.e ** (-(float(length - ref_length) ** 2) / (2 * sigma**2))
            for order in range(n):
                value = 0.0
                for ngram, weight in vector[order].items():
                    ref_weight = ref_vector[order].get(ngram, 0.0)
                    value += min(weight, ref_weight) * ref_weight
                if norm[order] != 0 and ref_norm[order] != 0:
                    value /= norm[order] * ref_norm[order]
                total[order] += value * penalty
        scores.append(sum(total) / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


class CiderD(evaluate.Metric):
    """``evaluate`` wrapper of :func:`cider_d`."""

    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(_DESCRIPTION, _CITATION, _INPUTS)

    def _compute(self, predictions, references, tokenize: bool = True, n: int = 4, sigma: float = 6.0):
        if tokenize:
            predictions, references = ptb_tokenize_captions(predictions, references)
        score, per_clip = cider_d(predictions, references, n=n, sigma=sigma)
        return {"cider_d": score, "cider_d_per_clip": per_clip}
