"""Offline, exact evaluation: captioning (CIDEr-D, BLEU-4, ROUGE-L) and video QA (accuracy, WUPS).

Files (JSON lines):

* caption predictions ``{"video": ID, "caption": TEXT}`` (what ``prism-vlm caption --out`` writes);
* caption references ``{"video": ID, "captions": [TEXT, ...]}``;
* QA data ``{"video": PATH, "question": TEXT, "answer": TEXT}`` plus optional ``"type"`` (question
  type; default: the question's wh-word), ``"question_id"``, ``"answers"`` (further accepted
  answers, e.g. NExT-QA's extra references) and ``"start"``/``"end"`` (seconds). Video paths are
  relative to the file's folder unless ``video_root`` says otherwise.

QA follows the VideoPrism paper (appendix G): two-shot text-only prompts from the training set
(:func:`select_shots`: the two most common training answers, each with a random training question
that has it); open vocabulary = greedy answers; closed vocabulary = the top-K most frequent
one-token answers of train+val (:func:`closed_vocabulary`), each scored by log-likelihood, the best
one predicted, so a question whose answer is not a candidate is wrong; K chosen by val accuracy
over 100/250/500/1000/2000 (:func:`tune_k`). Accuracy compares answers after the VQA-style
:func:`normalize_answer`; WUPS comes from :mod:`vlm.wups`.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

K_GRID = (100, 250, 500, 1000, 2000)
DEFAULT_K = 250
WUPS_THRESHOLDS = (0.0, 0.9)
QUESTION_WORDS = ("what", "who", "whom", "whose", "which", "when", "where", "why", "how")


class EvaluationFileError(ValueError):
    """A predictions, references or QA file that cannot be used (names the file, line and reason)."""


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvaluationFileError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise EvaluationFileError(f"{path}:{line_number}: expected a JSON object")
            yield line_number, row


def _string_field(row: dict, key: str, path, line_number: int) -> str:
    value = row.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("video", "answer"):
        value = str(value)
    if not isinstance(value, str):
        raise EvaluationFileError(f"{path}:{line_number}: '{key}' must be a string, got {value!r}")
    return value


def read_caption_predictions(path: str | os.PathLike) -> dict[str, str]:
    """{video id: caption} from ``{"video", "caption"}`` lines; a repeated id is an error."""
    predictions: dict[str, str] = {}
    for line_number, row in _jsonl_rows(path):
        video = _string_field(row, "video", path, line_number)
        if video in predictions:
            raise EvaluationFileError(f"{path}:{line_number}: a second prediction for {video!r}")
        predictions[video] = _string_field(row, "caption", path, line_number)
    return predictions


def read_caption_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """{video id: reference captions} from ``{"video", "captions": [...]}`` lines (a single
    ``"caption"`` is accepted too); lines of the same id are pooled."""
    references: dict[str, list[str]] = defaultdict(list)
    for line_number, row in _jsonl_rows(path):
        video = _string_field(row, "video", path, line_number)
        captions = row.get("captions", [row["caption"]] if "caption" in row else None)
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise EvaluationFileError(f"{path}:{line_number}: 'captions' must be a non-empty list of strings")
        references[video].extend(captions)
    if not references:
        raise EvaluationFileError(f"{path}: no references")
    return dict(references)


@dataclass(frozen=True)
class QAExample:
    """One question about one video.

    video: the video file (resolved path); question_type: the row's "type" or the question's
    wh-word; alternatives: further accepted answers; start, end: the video window in seconds.
    """

    video: str
    question: str
    answer: str
    question_type: str
    question_id: str
    alternatives: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.answer, *self.alternatives)


def question_type_of(question: str) -> str:
    """The question's first wh-word ("what", "who", "how", ...), else "other"."""
    for word in re.findall(r"[a-z]+", question.lower()):
        if word in QUESTION_WORDS:
            return word
    return "other"


def read_qa(path: str | os.PathLike, video_root: str | os.PathLike | None = None) -> list[QAExample]:
    """QA examples of a JSONL file (see the module docstring)."""
    path = Path(path)
    root = Path(video_root) if video_root is not None else path.parent
    examples = []
    for line_number, row in _jsonl_rows(path):
        video = Path(_string_field(row, "video", path, line_number))
        question = _string_field(row, "question", path, line_number)
        answer = _string_field(row, "answer", path, line_number)
        alternatives = row.get("answers", [])
        if not isinstance(alternatives, list) or not all(isinstance(a, str) for a in alternatives):
            raise EvaluationFileError(f"{path}:{line_number}: 'answers' must be a list of strings")
        examples.append(
            QAExample(
                video=str(video if video.is_absolute() else root / video),
                question=question,
                answer=answer,
                question_type=str(row.get("type") or question_type_of(question)),
                question_id=str(row.get("question_id", f"{path.stem}:{line_number}")),
                alternatives=tuple(a for a in alternatives if a != answer),
                start=row.get("start"),
                end=row.get("end"),
            )
        )
    if not examples:
        raise EvaluationFileError(f"{path}: no questions")
    return examples


# ---------------------------------------------------------------------------------------------
# Captioning metrics
# ---------------------------------------------------------------------------------------------


def evaluate_captions(
    predictions: dict[str, str], references: dict[str, list[str]], allow_missing: bool = False
) -> dict:
    """CIDEr-D, BLEU-1..4 and ROUGE-L (the ``evaluate`` modules of :mod:`vlm.metrics`, loaded by
    path) over the clips of ``references``, after the COCO toolkit's PTB tokenisation.

    A clip without a prediction is an error, or with ``allow_missing`` an empty caption.
    Returns {"num_clips", "missing_predictions", "ignored_predictions", "cider_d", "bleu_1" ..
    "bleu_4", "rouge_l"} with scores on the toolkit's scale (CIDEr-D 0..10, the others 0..1).
    """
    from vlm.metrics import load_metric
    from vlm.metrics.ptb_tokenizer import ptb_tokenize

    ids = list(references)
    missing = [video for video in ids if video not in predictions]
    if missing and not allow_missing:
        raise EvaluationFileError(
            f"{len(missing)} of {len(ids)} clips have no prediction (e.g. {missing[:5]}); "
            "caption them, or pass --allow-missing to score them as empty captions"
        )
    tokenized_predictions = [ptb_tokenize(predictions.get(video, "")) for video in ids]
    tokenized_references = [[ptb_tokenize(caption) for caption in references[video]] for video in ids]
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


# ---------------------------------------------------------------------------------------------
# Answer normalisation (VQA / MSRVTT-QA literature)
# ---------------------------------------------------------------------------------------------

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hes": "he's", "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "ive": "i've",
    "shes": "she's", "shouldnt": "shouldn't", "thats": "that's", "theres": "there's", "theyre": "they're",
    "theyve": "they've", "wasnt": "wasn't", "werent": "weren't", "whats": "what's", "wont": "won't",
    "wouldnt": "wouldn't", "youre": "you're", "youve": "you've",
}


def normalize_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation: lower-case; punctuation removed (or made a
    space between words; commas inside numbers and decimal points kept); articles dropped; number
    words zero..ten as digits ("none" -> "0"); common contractions restored ("dont" -> "don't")."""
    text = " ".join(text.replace("\n", " ").replace("\t", " ").lower().split())
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_BETWEEN_DIGITS.search(text) is not None:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _PERIOD_NOT_IN_NUMBER.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# Few-shot prompts and the closed vocabulary
# ---------------------------------------------------------------------------------------------


def select_shots(train: Sequence[QAExample], num_shots: int = 2, seed: int = 0):
    """The paper's text-only shots: the ``num_shots`` most common training answers (lower-cased;
    ties by first appearance), each with a training question drawn at random (``seed``) among
    those with that answer. Returns ``vlm.prompts.Shot`` objects."""
    from vlm.prompts import Shot

    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0, got {num_shots}")
    by_answer: dict[str, list[QAExample]] = defaultdict(list)
    for example in train:
        by_answer[" ".join(example.answer.lower().split())].append(example)
    counts = Counter({answer: len(rows) for answer, rows in by_answer.items() if answer})
    rng = random.Random(seed)
    shots = []
    for answer, _ in counts.most_common(num_shots):
        chosen = rng.choice(by_answer[answer])
        shots.append(Shot(" ".join(chosen.question.split()), answer))
    return shots


def closed_vocabulary(answer_sets: Iterable[Iterable[str]], tokenizer, max_k: int = max(K_GRID)) -> list[str]:
    """Candidate answers, most frequent first: answers (pooled over the given sets, e.g. train and
    val) that are one token for ``tokenizer`` as they follow the prompt, at most ``max_k``."""
    from vlm.scoring import top_k_one_token_answers

    answers = [answer for answers in answer_sets for answer in answers]
    vocabulary = top_k_one_token_answers(answers, tokenizer, k=max_k)
    if not vocabulary:
        raise EvaluationFileError("no one-token answers to build a closed vocabulary from")
    return vocabulary


# ---------------------------------------------------------------------------------------------
# Running the model over questions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VideoKey:
    video: str
    start: float | None
    end: float | None


def _video_key(example: QAExample) -> _VideoKey:
    return _VideoKey(example.video, example.start, example.end)


def _video_token_batches(
    model, keys: Sequence[_VideoKey], batch_size: int, features=None, num_workers: int = 2
) -> Iterator[list[tuple[_VideoKey, torch.Tensor | None]]]:
    """Per batch of videos: (key, encoder tokens [M, D] or None when unreadable). Tokens come from
    a feature cache (looked up by path) or from decoding + the frozen encoder."""
    if features is not None:
        for start in range(0, len(keys), batch_size):
            batch = keys[start : start + batch_size]
            yield [(key, features.get(key.video).float() if key.video in features else None) for key in batch]
        return
    from encoder.features import encode_clips
    from vlm.batch_caption import Clip, iter_decoded_batches

    if model.encoder is None:
        raise ValueError("this model has no video encoder; give a feature cache (--features) instead")
    clips = [Clip(str(index), key.video, key.start, key.end) for index, key in enumerate(keys)]
    for items in iter_decoded_batches(clips, model.config.num_frames, model.config.frame_size, batch_size, num_workers):
        good = [frames for _, frames, _ in items if frames is not None]
        tokens = iter(encode_clips(model.encoder, np.stack(good)) if good else [])
        yield [(keys[int(clip.id)], next(tokens) if frames is not None else None) for clip, frames, _ in items]


def _question_batches(
    model, examples: Sequence[QAExample], batch_size: int, features, num_workers: int, progress: bool, description: str
) -> Iterator[tuple[list[int], torch.Tensor | None]]:
    """(question indices, their videos' tokens [b, M, D]) in batches of up to ``batch_size``
    questions; questions of unreadable videos come with None."""
    from tqdm.auto import tqdm

    by_video: dict[_VideoKey, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        by_video[_video_key(example)].append(index)
    bar = tqdm(total=len(examples), unit="question", desc=description, disable=not progress)
    try:
        for video_batch in _video_token_batches(model, list(by_video), batch_size, features, num_workers):
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


def one_token_log_likelihoods(
    model, questions: Sequence[str], video_tokens: torch.Tensor, candidate_ids: Sequence[int], shots=()
) -> torch.Tensor:
    """Log-probabilities of one-token candidates for a batch of questions, one forward pass.

    video_tokens: [B, M, D] encoder tokens (one video per question); candidate_ids: C token ids.
    The prompt is exactly ``model.score_answers``'s (leading special tokens, video, QA prompt),
    left-padded. Returns float32 [B, C].
    """
    from vlm.generation import accepts_logits_to_keep
    from vlm.prompts import leading_special_ids, text_ids

    prompts = [model.qa_prompt(question, shots) for question in questions]
    with torch.inference_mode():
        features = model.get_video_features(video_tokens=video_tokens)
        leading = leading_special_ids(model.tokenizer)
        inputs = model.merge_video_and_text(
            features, [leading] * len(prompts), [text_ids(model.tokenizer, prompt) for prompt in prompts]
        )
        kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(model.llm) else {}
        logits = model.llm(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
            **kwargs,
        ).logits[:, -1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        return log_probs[:, torch.as_tensor(list(candidate_ids), device=log_probs.device)].cpu()


def predict_open(
    model,
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
    for indices, tokens in _question_batches(model, examples, batch_size, features, num_workers, progress, "answering"):
        if tokens is None:
            continue
        answers = model.answer(
            [examples[i].question for i in indices], video_tokens=tokens, shots=shots, max_new_tokens=max_new_tokens
        )
        for i, answer in zip(indices, answers):
            predictions[i] = answer
    return predictions


def score_candidates(
    model,
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
    each question goes through ``model.score_answers`` (prefix KV-cache reuse)."""
    from vlm.scoring import candidate_token_ids, check_candidates

    candidates = check_candidates(candidates)
    ids = candidate_token_ids(model.tokenizer, candidates)
    one_token = all(len(tokens) == 1 for tokens in ids)
    scores = np.full((len(examples), len(candidates)), np.nan, dtype=np.float32)
    position = {candidate: column for column, candidate in enumerate(candidates)}
    for indices, tokens in _question_batches(model, examples, batch_size, features, num_workers, progress, "scoring"):
        if tokens is None:
            continue
        if one_token:
            questions = [examples[i].question for i in indices]
            scores[indices] = one_token_log_likelihoods(model, questions, tokens, [t[0] for t in ids], shots).numpy()
            continue
        for row, i in enumerate(indices):
            ranked = model.score_answers(examples[i].question, candidates, video_tokens=tokens[row : row + 1], shots=shots)
            for scored in ranked:
                scores[i, position[scored.answer]] = scored.log_likelihood
    return scores


def closed_predictions(scores: np.ndarray, candidates: Sequence[str], k: int) -> list[str | None]:
    """The best of the first ``k`` candidates per row of ``scores`` [N, C] (None for NaN rows;
    ties go to the more frequent candidate)."""
    top = scores[:, :k]
    return [None if np.isnan(row).all() else candidates[int(np.argmax(row))] for row in top]


# ---------------------------------------------------------------------------------------------
# Scoring predictions
# ---------------------------------------------------------------------------------------------


def qa_report(
    examples: Sequence[QAExample],
    predictions: Sequence[str | None],
    wups_scorer=None,
) -> tuple[dict, list[dict]]:
    """Accuracy (normalised exact match against any accepted answer; None predictions are wrong),
    overall and per question type, plus WUPS at 0.0 and 0.9 when a ``vlm.wups.WupsScorer`` is
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
    model,
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
        raise ValueError("tuning K needs validation questions")
    if tune and k is not None:
        raise ValueError("give either k or tune, not both")
    shots = select_shots(train, num_shots, seed) if train and num_shots else []
    results: dict = {"mode": mode, "shots": [{"question": s.question, "answer": s.answer} for s in shots]}
    common = dict(batch_size=batch_size, features=features, num_workers=num_workers, progress=progress)
    if mode == "open":
        predictions = predict_open(model, test, shots, max_new_tokens=max_new_tokens, **common)
    else:
        if candidates is None:
            answer_sets = [[e.answer for e in train], [e.answer for e in val], list(extra_vocabulary)]
            if not any(answer_sets):
                raise ValueError("the closed vocabulary needs training answers (shots file), --extra-vocab or candidates")
            candidates = closed_vocabulary(answer_sets, model.tokenizer, max(max(K_GRID), k or 0))
        closed: dict = {"num_candidates": len(candidates)}
        if tune:
            val_scores = score_candidates(model, val, candidates, shots, **common)
            k, accuracy_by_k = tune_k(val, val_scores, candidates)
            closed["val_accuracy_by_k"] = {str(key): value for key, value in accuracy_by_k.items()}
        k = min(k or DEFAULT_K, len(candidates))
        chosen = [normalize_answer(c) for c in candidates[:k]]
        closed["k"] = k
        closed["test_answer_coverage"] = 100.0 * sum(
            any(normalize_answer(a) in chosen for a in e.answers) for e in test
        ) / len(test)
        scores = score_candidates(model, test, candidates[:k], shots, **common)
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
        notes.append(f"K = {closed['k']} of {closed['num_candidates']} candidates, test answers covered {closed['test_answer_coverage']:.2f}%")
    if results.get("shots"):
        notes.append(f"{len(results['shots'])}-shot")
    if wups:
        notes.append(f"WUPS protocol: {results['wups_protocol']}")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + "\n"


def write_json(path: str | os.PathLike, value) -> None:
    """Write JSON (indented) via a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
