"""Caption evaluation: CIDEr-D, BLEU-1..4 and ROUGE-L of caption predictions against references,
as the COCO caption toolkit scores them (the ``evaluate`` modules of this package, offline).

Predictions and references are read by ``vlm.evaluation.data`` (``read_caption_predictions``,
``read_caption_references``).
"""

from __future__ import annotations

from vlm.evaluation.data import EvaluationFileError
from vlm.evaluation.metrics import load_metric
from vlm.evaluation.metrics.ptb_tokenizer import ptb_tokenize_captions


def evaluate_captions(
    predictions: dict[str, str], references: dict[str, list[str]], allow_missing: bool = False
) -> dict:
    """CIDEr-D, BLEU-1..4 and ROUGE-L (the ``evaluate`` modules of :mod:`vlm.evaluation.metrics`, loaded by
    path) over the clips of ``references``, after the COCO toolkit's PTB tokenisation.

    A clip without a prediction is an error, or with ``allow_missing`` an empty caption.
    Returns {"num_clips", "missing_predictions", "ignored_predictions", "cider_d", "bleu_1" ..
    "bleu_4", "rouge_l"} with scores on the toolkit's scale (CIDEr-D 0..10, the others 0..1).
    """
    ids = list(references)
    missing = [video for video in ids if video not in predictions]
    if missing and not allow_missing:
        raise EvaluationFileError(
            f"{len(missing)} of {len(ids)} clips have no prediction (e.g. {missing[:5]}); "
            "caption them, or pass --allow-missing to score them as empty captions"
        )
    tokenized_predictions, tokenized_references = ptb_tokenize_captions(
        [predictions.get(video, "") for video in ids], [references[video] for video in ids]
    )
    results: dict = {
        "num_clips": len(ids),
        "missing_predictions": len(missing),
        "ignored_predictions": len(set(predictions) - set(ids)),
    }
    for name in ("cider_d", "bleu4", "rouge_l"):
        scores = load_metric(name).compute(
            predictions=tokenized_predictions, references=tokenized_references, tokenize=False
        )
        results.update({key: value for key, value in scores.items() if not key.endswith("_per_clip")})
    return results


def caption_markdown(results: dict) -> str:
    """A markdown table of :func:`evaluate_captions` results, x100 as papers report them."""
    names = [("cider_d", "CIDEr-D"), ("bleu_4", "BLEU-4"), ("rouge_l", "ROUGE-L")]
    lines = ["| clips | " + " | ".join(label for _, label in names) + " |", "|---:|" + "---:|" * len(names)]
    lines.append(f"| {results['num_clips']} | " + " | ".join(f"{100 * results[key]:.2f}" for key, _ in names) + " |")
    return "\n".join(lines) + "\n"
