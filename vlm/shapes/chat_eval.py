"""Chat accuracy on moving-shapes clips: does the assistant's reply to a plain question name the
clip's true answer, and no other answer of the same kind?

For each probe (:data:`CHAT_PROBES`) a one-turn chat is sent with the clip and the reply is scored
by the answer words it names (:func:`named_answers`, whole words, case-insensitive): right when it
names exactly the true one ("The object is cyan." for a cyan clip), wrong when it names another, two,
or none. Colour and motion are asked about one-object clips, count about every clip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from vlm.shapes.language import ANSWER_VOCABULARY, COUNT_WORDS
from vlm.shapes.render import ClipAttributes

CHAT_PROBES: dict[str, str] = {
    "colour": "What colour is the object?",
    "motion": "How is the object moving?",
    "count": "How many shapes are there?",
}


def named_answers(reply: str, kind: str) -> set[str]:
    """The answer words of ``kind`` (colour, shape, motion, count) that ``reply`` names."""
    words = set(re.findall(r"[a-z]+", reply.lower()))
    return {answer for answer in ANSWER_VOCABULARY[kind] if answer in words}


def true_answer(clip: ClipAttributes, kind: str) -> str:
    if kind == "colour":
        return clip.objects[0].colour
    if kind == "motion":
        return clip.motion
    if kind == "count":
        return COUNT_WORDS[len(clip.objects) - 1]
    raise ValueError(f"no chat probe of kind {kind!r}; kinds: {sorted(CHAT_PROBES)}")


def probe_clips(clips: Sequence[ClipAttributes], kind: str) -> list[ClipAttributes]:
    """The clips a probe asks about: one-object clips for colour and motion, all for count."""
    return list(clips) if kind == "count" else [clip for clip in clips if len(clip.objects) == 1]


def chat_accuracy(
    clips: Sequence[ClipAttributes],
    reply: Callable[[ClipAttributes, str], str],
    kinds: Sequence[str] = tuple(CHAT_PROBES),
) -> dict:
    """Score ``reply(clip, message) -> str`` (a one-turn chat about the clip) on every probe kind.

    Returns {kind: {"accuracy", "clips", "distinct_replies", "examples": [first 5 {"clip", "reply", "answer"}]}}.
    """
    result = {}
    for kind in kinds:
        chosen = probe_clips(clips, kind)
        replies = [reply(clip, CHAT_PROBES[kind]) for clip in chosen]
        right = [named_answers(text, kind) == {true_answer(clip, kind)} for clip, text in zip(chosen, replies)]
        result[kind] = {
            "question": CHAT_PROBES[kind],
            "accuracy": sum(right) / len(right) if right else float("nan"),
            "clips": len(chosen),
            "distinct_replies": len(set(replies)),
            "examples": [
                {"clip": clip.id, "reply": text, "answer": true_answer(clip, kind)}
                for clip, text in list(zip(chosen, replies))[:5]
            ],
        }
    return result
