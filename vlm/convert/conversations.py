"""Conversation rows of instruction-tuning data sets, read into chat messages.

Two layouts are read:

* LLaVA's (VideoChatGPT-100K, LLaVA-Video-178K, VideoChat2-IT)::

      {"video": "clip.mp4", "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                                              {"from": "gpt", "value": "A man drums."}, ...]}

* Hugging Face's messages::

      {"video": "clip.mp4", "messages": [{"role": "user", "content": "What happens?"},
                                         {"role": "assistant", "content": "A man drums."}, ...]}

  where ``content`` may also be a list of parts (``{"type": "video"}``, ``{"type": "text", "text": ...}``).

:func:`read_conversation` returns ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` or
raises :class:`ConversationError` with the reason (the training data reader counts and reports those
rows). A valid conversation: an optional system turn first, then user and assistant turns
alternating, starting with a user turn, with at least one assistant turn; no empty text; a video
marker (``<video>`` or ``<image>``, or a video part) only in the first user turn, where it is
removed -- the glue always puts the video at the start of the first user turn. A trailing user
turn without a reply is dropped.
"""

from __future__ import annotations

import re

from encoder.common.errors import PrismVlmError

ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}
VIDEO_MARKERS = ("<video>", "<image>")
_MARKER_PATTERN = re.compile(r"\s*(?:<video>|<image>)\s*")


class ConversationError(PrismVlmError, ValueError):
    """A conversation row that cannot be trained on; the message starts with a short reason key."""


def _content(value, number: int) -> tuple[str, bool]:
    """(text, has a video part) of a message's content: a string or a list of typed parts."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, list):
        texts, video = [], False
        for part in value:
            if not isinstance(part, dict):
                raise ConversationError(f"bad message: turn {number} has a content part that is not an object")
            kind = part.get("type")
            if kind in ("video", "image"):
                video = True
            elif kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise ConversationError(f"bad message: turn {number} has a content part of type {kind!r}")
        return "\n".join(texts), video
    raise ConversationError(f"bad message: turn {number} content is {type(value).__name__}, not text")


def read_conversation(turns) -> list[dict]:
    """Chat messages of one row's ``conversations`` (LLaVA) or ``messages`` (Hugging Face) value."""
    if not isinstance(turns, list) or not turns:
        raise ConversationError("no turns: the conversation is not a non-empty list")
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ConversationError(f"bad message: turn {number} is not an object")
        if "from" in turn:
            role, (text, video_part) = turn.get("from"), _content(turn.get("value"), number)
        else:
            role, (text, video_part) = turn.get("role"), _content(turn.get("content"), number)
        if not isinstance(role, str) or role.lower() not in ROLE_NAMES:
            raise ConversationError(f"unknown role: turn {number} has role {role!r}")
        has_marker = video_part or any(marker in text for marker in VIDEO_MARKERS)
        messages.append({"role": ROLE_NAMES[role.lower()], "content": text, "marker": has_marker})

    start = 1 if messages[0]["role"] == "system" else 0
    expected = "user"
    for number, message in enumerate(messages[start:], start):
        if message["role"] != expected:
            raise ConversationError(f"roles out of order: turn {number} is {message['role']!r}, expected {expected!r}")
        expected = "assistant" if expected == "user" else "user"
    if messages[-1]["role"] == "user" and len(messages) > start + 1:
        messages.pop()  # a question without a reply teaches nothing
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("no assistant turn: nothing to learn from")
    for number, message in enumerate(messages):
        if message["marker"] and number != start:
            raise ConversationError(
                f"video marker in a later turn: turn {number} (the video goes in the first user turn)"
            )
        text = _MARKER_PATTERN.sub(" ", message["content"]).strip() if number == start else message["content"].strip()
        if not text:
            raise ConversationError(f"empty text: turn {number} has no text")
        message["content"] = text
        del message["marker"]
    return messages
