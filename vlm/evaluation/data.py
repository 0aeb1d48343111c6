"""The evaluation files: caption predictions, caption references and video QA examples.

Files (JSON lines, read strictly: a bad line raises :class:`EvaluationFileError` naming the file,
the line and the reason):

* caption predictions ``{"video": ID, "caption": TEXT}`` (what ``prism-vlm caption --out`` writes);
* caption references ``{"video": ID, "captions": [TEXT, ...]}``;
* QA data ``{"video": PATH, "question": TEXT, "answer": TEXT}`` plus optional ``"type"`` (question
  type; default: the question's wh-word, :func:`question_type_of`), ``"question_id"``,
  ``"answers"`` (further accepted answers, e.g. NExT-QA's extra references) and
  ``"start"``/``"end"`` (seconds). Video paths are relative to the file's folder unless
  ``video_root`` says otherwise.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from encoder.common.errors import PrismVlmError
from encoder.common.jsonl import iter_jsonl_strict

QUESTION_WORDS = ("what", "who", "whom", "whose", "which", "when", "where", "why", "how")


class EvaluationFileError(PrismVlmError, ValueError):
    """A predictions, references or QA file that cannot be used (names the file, line and reason)."""


def _rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line (``encoder.common.jsonl.iter_jsonl_strict``); a line that
    is not UTF-8, not JSON or not an object is an EvaluationFileError, a missing file a
    FileNotFoundError."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    yield from iter_jsonl_strict(path, EvaluationFileError)


def question_type_of(question: str) -> str:
    """The question's first wh-word ("what", "who", "how", ...), else "other"."""
    for word in re.findall(r"[a-z]+", question.lower()):
        if word in QUESTION_WORDS:
            return word
    return "other"


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
    for line_number, row in _rows(path):
        video = _string_field(row, "video", path, line_number)
        if video in predictions:
            raise EvaluationFileError(f"{path}:{line_number}: a second prediction for {video!r}")
        predictions[video] = _string_field(row, "caption", path, line_number)
    return predictions


def read_caption_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """{video id: reference captions} from ``{"video", "captions": [...]}`` lines (a single
    ``"caption"`` is accepted too); lines of the same id are pooled."""
    references: dict[str, list[str]] = defaultdict(list)
    for line_number, row in _rows(path):
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


def read_qa(path: str | os.PathLike, video_root: str | os.PathLike | None = None) -> list[QAExample]:
    """QA examples of a JSONL file (see the module docstring)."""
    path = Path(path)
    root = Path(video_root) if video_root is not None else path.parent
    examples = []
    for line_number, row in _rows(path):
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
