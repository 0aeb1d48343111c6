"""Caption metrics shipped as Hugging Face ``evaluate`` modules, loaded by path (offline).

Each metric is one module file in this folder, a subclass of ``evaluate.Metric`` that
``evaluate.load(path)`` accepts; the computation itself is a plain function in the same file:

| name | module | computes |
| --- | --- | --- |
| ``cider_d`` | ``cider_d.py`` | CIDEr-D as the COCO caption toolkit's ``Cider`` |
| ``bleu4`` | ``bleu4.py`` | BLEU-1..4 as the COCO toolkit's ``Bleu`` (corpus level, closest reference length) |
| ``rouge_l`` | ``rouge_l.py`` | ROUGE-L as the COCO toolkit's ``Rouge`` (beta 1.2, best reference) |

:mod:`vlm.evaluation.metrics.captions` scores prediction files with all three (``prism-vlm eval-caption``).

All three tokenise captions with :func:`vlm.evaluation.metrics.ptb_tokenizer.ptb_tokenize` (the toolkit's
PTB tokenisation without Java) unless ``tokenize=False``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
CAPTION_METRICS = ("cider_d", "bleu4", "rouge_l")


def metric_path(name: str) -> Path:
    """Path of the ``evaluate`` module file of a caption metric (one of :data:`CAPTION_METRICS`)."""
    if name not in CAPTION_METRICS:
        raise ValueError(f"unknown caption metric {name!r}; choose from {CAPTION_METRICS}")
    return METRICS_DIR / f"{name}.py"


def load_metric(name: str):
    """``evaluate.load`` of a caption metric by its file path (no network access)."""
    from encoder.common.extras import require

    evaluate = require("evaluate", "eval", "caption metrics")

    return evaluate.load(str(metric_path(name)))


def caption_metric_info(description: str, citation: str, inputs_description: str):
    """The ``evaluate.MetricInfo`` the three caption metrics share: a string prediction and a list of
    reference strings per clip, after the COCO caption toolkit."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features(
            {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        ),
        reference_urls=["https://github.com/tylin/coco-caption"],
    )


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counts of every 1..n-gram of ``tokens`` (tuples of tokens), as the COCO toolkit's ``precook``."""
    counts: Counter = Counter()
    for order in range(1, n + 1):
        for start in range(len(tokens) - order + 1):
            counts[tuple(tokens[start : start + order])] += 1
    return counts
