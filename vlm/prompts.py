"""Text prompts around the video tokens: captioning, question answering (with few-shot examples),
closed-vocabulary candidates (a chat is rendered by ``vlm.chat_template``).

Every prompt is laid out as ``[leading special tokens] [video tokens] [text]``: the video tokens come
first, right after any BOS token the tokenizer would add, and the text follows them. A chat puts the
video tokens at the start of the first user turn, wherever the chat template places that turn.

A candidate answer is scored as the text that follows the QA prompt ``"... answer:"``;
:func:`answer_continuation` defines that text (a leading space, then the stripped answer) once for
every scoring path.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from encoder.common.configs import config_from_dict, config_to_dict
from encoder.common.errors import PrismVlmError

VIDEO_MARKER = "<|prism_video|>"
ANSWER_PREFIX = " "


class EmptyQuestionError(PrismVlmError, ValueError):
    """The question is empty (or only whitespace)."""


class ShotsFileError(PrismVlmError, ValueError):
    """A few-shot examples file that cannot be read."""


class ChatMessagesError(PrismVlmError, ValueError):
    """Chat messages that are not a list of {"role", "content"} dicts with a user turn."""


@dataclass
class PromptConfig:
    """Prompt formats, saved in the glue config.

    caption_prompt: text after the video tokens when captioning; the caption is its continuation.
    qa_template: question prompt; ``{question}`` is replaced by the question.
    shot_template: a text-only few-shot example (``{question}``, ``{answer}``), as in the paper:
        "question: who is talking to his family? answer: man."
    shot_separator: between few-shot examples and before the question.
    max_question_tokens: longer questions are truncated to this many tokens (with a warning).
    """

    caption_prompt: str = "A video of"
    qa_template: str = "question: {question} answer:"
    shot_template: str = "question: {question} answer: {answer}."
    shot_separator: str = "\n"
    max_question_tokens: int = 64

    def __post_init__(self) -> None:
        if "{question}" not in self.qa_template:
            raise ValueError(f"qa_template must contain '{{question}}', got {self.qa_template!r}")
        if "{question}" not in self.shot_template or "{answer}" not in self.shot_template:
            raise ValueError(f"shot_template must contain '{{question}}' and '{{answer}}', got {self.shot_template!r}")
        if self.max_question_tokens < 1:
            raise ValueError(f"max_question_tokens must be >= 1, got {self.max_question_tokens}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PromptConfig":
        return config_from_dict(cls, values)


@dataclass(frozen=True)
class Shot:
    """A text-only few-shot QA example."""

    question: str
    answer: str


def answer_continuation(candidate: str) -> str:
    """The text a candidate answer is scored as, following the QA prompt: ``" " + candidate.strip()``."""
    return ANSWER_PREFIX + candidate.strip()


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids the tokenizer puts before any text (e.g. BOS); they go before the video tokens."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if not without or len(with_special) < len(without):
        return []
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start : start + len(without)] == without:
            return list(with_special[:start])
    return []


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def clean_question(tokenizer: PreTrainedTokenizerBase, question: str, max_tokens: int) -> str:
    """Strip whitespace; raise EmptyQuestionError if nothing is left; truncate to ``max_tokens`` tokens
    with a warning."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    question = " ".join(question.split())
    if not question:
        raise EmptyQuestionError("the question is empty")
    ids = text_ids(tokenizer, question)
    if len(ids) > max_tokens:
        question = tokenizer.decode(ids[:max_tokens]).strip()
        warnings.warn(
            f"question has {len(ids)} tokens; truncated to the first {max_tokens}: {question!r}", stacklevel=3
        )
    return question


def qa_prompt(config: PromptConfig, question: str, shots: Sequence[Shot] = ()) -> str:
    """Few-shot examples then the question prompt, e.g.
    "question: who is talking to his family? answer: man.\\nquestion: what is he doing? answer:"."""
    parts = [config.shot_template.format(question=shot.question.strip(), answer=shot.answer.strip()) for shot in shots]
    parts.append(config.qa_template.format(question=question))
    return config.shot_separator.join(parts)


def clean_open_answer(text: str) -> str:
    """Generated QA text -> the answer: first line, stripped, without a trailing period."""
    answer = text.split("\n", 1)[0].strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def load_shots(path: str | os.PathLike) -> list[Shot]:
    """Few-shot examples from a JSON list or a JSONL file of {"question": ..., "answer": ...} objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shots file not found: {path}")
    text = path.read_text(encoding="utf-8").strip()
    try:
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ShotsFileError(f"{path}: not JSON or JSONL ({error})") from None
    shots = []
    for number, row in enumerate(rows, 1):
        if (
            not isinstance(row, dict)
            or not str(row.get("question", "")).strip()
            or not str(row.get("answer", "")).strip()
        ):
            raise ShotsFileError(f"{path}: example {number} needs non-empty 'question' and 'answer' fields")
        shots.append(Shot(str(row["question"]), str(row["answer"])))
    return shots
