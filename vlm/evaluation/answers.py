"""Answers of video QA: the VQA answer normalisation, the text-only shots and the closed vocabulary
drawn from training answers, and closed-vocabulary predictions from candidate scores.

As the VideoPrism paper (appendix G): two-shot text-only prompts from the training set
(:func:`select_shots`: the two most common training answers, each with a random training question
that has it); closed vocabulary = the top-K most frequent one-token answers of train+val
(:func:`closed_vocabulary`), each scored by log-likelihood, the best one predicted
(:func:`closed_predictions`), so a question whose answer is not a candidate is wrong; K chosen over
:data:`K_GRID` on val (``vlm.evaluation.qa.tune_k``). Accuracy compares answers after the VQA-style
:func:`normalize_answer`.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from vlm.evaluation.data import EvaluationFileError, QAExample

K_GRID = (100, 250, 500, 1000, 2000)
"""The closed vocabulary sizes K is tuned over."""
DEFAULT_K = 250
"""The closed vocabulary size when K is neither given nor tuned."""

# VQA / MSRVTT-QA answer normalisation tables
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "im": "i'm",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "ive": "i've",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "youre": "you're",
    "youve": "you've",
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
    from vlm.inference.scoring import top_k_one_token_answers

    answers = [answer for answers in answer_sets for answer in answers]
    vocabulary = top_k_one_token_answers(answers, tokenizer, k=max_k)
    if not vocabulary:
        raise EvaluationFileError("no one-token answers to build a closed vocabulary from")
    return vocabulary


def closed_predictions(scores: np.ndarray, candidates: Sequence[str], k: int) -> list[str | None]:
    """The best of the first ``k`` candidates per row of ``scores`` [N, C] (None for NaN rows;
    ties go to the more frequent candidate)."""
    top = scores[:, :k]
    return [None if np.isnan(row).all() else candidates[int(np.argmax(row))] for row in top]
