"""Zero-shot video QA evaluation with the VideoPrism paper's protocol (appendix G), and its reports.

:func:`evaluate_qa` runs one protocol on a test set: two-shot text-only prompts from the training
set (``vlm.evaluation.answers.select_shots``); open vocabulary = greedy answers; closed vocabulary = the top-K
most frequent one-token answers of train+val (``vlm.evaluation.answers.closed_vocabulary``), each scored by
log-likelihood, the best one predicted, so a question whose answer is not a candidate is wrong; K
chosen by val accuracy over 100/250/500/1000/2000 (:func:`tune_k`). :func:`qa_report` scores
predictions: accuracy after the VQA-style ``vlm.evaluation.answers.normalize_answer``, overall and per
question type, and WUPS from :mod:`vlm.evaluation.wups`; :func:`qa_markdown` renders the results as a table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from encoder.common.errors import UsageError
from vlm.evaluation.answers import (
    DEFAULT_K,
    K_GRID,
    closed_predictions,
    closed_vocabulary,
    normalize_answer,
    select_shots,
)
from vlm.evaluation.data import QAExample
from vlm.evaluation.qa_inference import predict_open, score_candidates

WUPS_THRESHOLDS = (0.0, 0.9)


def qa_report(
    examples: Sequence[QAExample],
    predictions: Sequence[str | None],
    wups_scorer=None,
) -> tuple[dict, list[dict]]:
    """Accuracy (normalised exact match against any accepted answer; None predictions are wrong),
    overall and per question type, plus WUPS at 0.0 and 0.9 when a ``vlm.evaluation.wups.WupsScorer`` is
    given. Values are percentages. Returns (summary, one record per question)."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} questions")
    records = []
    for example, prediction in zip(examples, predictions):
        normalized = normalize_answer(prediction) if prediction is not None else None
        record = {
            "question_id": example.question_id,
            "video": example.video,
            "type": example.question_type,
            "question": example.question,
            "answer": example.answer,
            "prediction": prediction,
            "correct": normalized is not None and any(normalized == normalize_answer(a) for a in example.answers),
        }
        if wups_scorer is not None:
            for threshold in WUPS_THRESHOLDS:
                record[f"wups_{threshold}"] = (
                    0.0
                    if prediction is None
                    else wups_scorer.best_score(prediction, example.answers, threshold, example.question_type)
                )
        records.append(record)

    def summarise(rows: list[dict]) -> dict:
        summary = {"count": len(rows), "accuracy": 100.0 * sum(r["correct"] for r in rows) / len(rows)}
        if wups_scorer is not None:
            for threshold in WUPS_THRESHOLDS:
                summary[f"wups_{threshold}"] = 100.0 * sum(r[f"wups_{threshold}"] for r in rows) / len(rows)
        return summary

    by_type: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_type[record["type"]].append(record)
    summary = {
        "num_questions": len(records),
        "unanswered": sum(r["prediction"] is None for r in records),
        **{key: value for key, value in summarise(records).items() if key != "count"},
        "per_type": {question_type: summarise(rows) for question_type, rows in sorted(by_type.items())},
    }
    if wups_scorer is not None:
        summary["wups_protocol"] = wups_scorer.protocol
    return summary, records


def tune_k(
    val: Sequence[QAExample], val_scores: np.ndarray, candidates: Sequence[str], grid: Sequence[int] = K_GRID
) -> tuple[int, dict[int, float]]:
    """The K of ``grid`` (capped at the number of candidates) with the best val accuracy (ties:
    the smaller K). Returns (best K, {K: val accuracy %})."""
    ks = sorted({min(k, len(candidates)) for k in grid})
    accuracy = {k: qa_report(val, closed_predictions(val_scores, candidates, k))[0]["accuracy"] for k in ks}
    best = max(ks, key=lambda k: (accuracy[k], -k))
    return best, accuracy


def evaluate_qa(
    assistant,
    test: Sequence[QAExample],
    mode: str,
    *,
    train: Sequence[QAExample] = (),
    val: Sequence[QAExample] = (),
    num_shots: int = 2,
    seed: int = 0,
    k: int | None = None,
    tune: bool = False,
    candidates: Sequence[str] | None = None,
    extra_vocabulary: Iterable[str] = (),
    wups_scorer=None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    features=None,
    num_workers: int = 2,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """The paper's zero-shot QA protocol on ``test`` (see the module docstring).

    mode: "open" (greedy answers) or "closed" (ranked candidates). Shots come from ``train``
    (none without it). Closed vocabulary: ``candidates`` if given, else the one-token answers of
    ``train`` + ``val`` + ``extra_vocabulary``; K = ``k``, or tuned on ``val`` when ``tune``, or
    250. Returns (results, per-question records); results are JSON-ready.
    """
    if mode not in ("open", "closed"):
        raise ValueError(f"mode must be 'open' or 'closed', got {mode!r}")
    if mode == "open" and (tune or k is not None or candidates is not None):
        raise ValueError("k, tune and candidates apply to the closed-vocabulary mode")
    if tune and not val:
        raise UsageError("tuning K needs validation questions")
    if tune and k is not None:
        raise ValueError("give either k or tune, not both")
    shots = select_shots(train, num_shots, seed) if train and num_shots else []
    results: dict = {"mode": mode, "shots": [{"question": s.question, "answer": s.answer} for s in shots]}
    common = dict(batch_size=batch_size, features=features, num_workers=num_workers, progress=progress)
    if mode == "open":
        predictions = predict_open(assistant, test, shots, max_new_tokens=max_new_tokens, **common)
    else:
        if candidates is None:
            answer_sets = [[e.answer for e in train], [e.answer for e in val], list(extra_vocabulary)]
            if not any(answer_sets):
                raise UsageError(
                    "the closed vocabulary needs training answers (shots file), --extra-vocab or candidates"
                )
            candidates = closed_vocabulary(answer_sets, assistant.tokenizer, max(max(K_GRID), k or 0))
        closed: dict = {"num_candidates": len(candidates)}
        if tune:
            val_scores = score_candidates(assistant, val, candidates, shots, **common)
            k, accuracy_by_k = tune_k(val, val_scores, candidates)
            closed["val_accuracy_by_k"] = {str(key): value for key, value in accuracy_by_k.items()}
        k = min(k or DEFAULT_K, len(candidates))
        chosen = [normalize_answer(c) for c in candidates[:k]]
        closed["k"] = k
        closed["test_answer_coverage"] = (
            100.0 * sum(any(normalize_answer(a) in chosen for a in e.answers) for e in test) / len(test)
        )
        scores = score_candidates(assistant, test, candidates[:k], shots, **common)
        predictions = closed_predictions(scores, candidates[:k], k)
        results["closed_vocabulary"] = closed
    summary, records = qa_report(test, predictions, wups_scorer)
    results.update(summary)
    return results, records


def qa_markdown(results: dict) -> str:
    """A markdown table of :func:`evaluate_qa` results: one row per question type and "all"."""
    wups = "wups_0.0" in results
    header = "| question type | questions | accuracy |" + (" WUPS@0.0 | WUPS@0.9 |" if wups else "")
    lines = [header, "|---|---:|---:|" + ("---:|---:|" if wups else "")]

    def row(name: str, values: dict, count: int) -> str:
        text = f"| {name} | {count} | {values['accuracy']:.2f} |"
        if wups:
            text += f" {values['wups_0.0']:.2f} | {values['wups_0.9']:.2f} |"
        return text

    for question_type, values in results["per_type"].items():
        lines.append(row(question_type, values, values["count"]))
    lines.append(row("**all**", results, results["num_questions"]))
    notes = [f"mode: {results['mode']}"]
    if "closed_vocabulary" in results:
        closed = results["closed_vocabulary"]
        notes.append(
            f"K = {closed['k']} of {closed['num_candidates']} candidates, test answers covered {closed['test_answer_coverage']:.2f}%"
        )
    if results.get("shots"):
        notes.append(f"{len(results['shots'])}-shot")
    if wups:
        notes.append(f"WUPS protocol: {results['wups_protocol']}")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + "\n"
