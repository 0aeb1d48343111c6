"""Token ids of a chat about one video, rendered with the LLM's own chat template -- the ONE place
where training and inference lay a conversation out.

Layout: ``[prefix_ids] [video tokens] [suffix_ids]``. The template renders the whole conversation
(its default system prompt included, if it has one); the video tokens go at the start of the first
user turn. The text after the video is tokenised piece by piece -- the template text around each
assistant reply, then each reply -- so a reply is tokenised exactly as the LLM generates it after
the template's generation prompt, and the history of a later turn is tokenised the same way at
inference (``add_generation_prompt=True``) as in training.

For training (:func:`chat_training_ids`) the labels cover the assistant replies only: each reply's
tokens and its end-of-turn token (e.g. SmolLM2's ``<|im_end|>``); the template text between turns
(role headers, the newline after an end-of-turn token), the system prompt, the user turns and the
video are ignored (-100).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from vlm.prompts import VIDEO_MARKER, ChatMessagesError, text_ids

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatIds:
    """A rendered chat: ``prefix_ids`` (before the video), ``suffix_ids`` (after it) and, per suffix
    position, ``labels`` (the token id where the position is an assistant token, else -100).
    ``kept_turns``/``total_turns``: assistant turns kept after truncation and in the input."""

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    labels: tuple[int, ...]
    kept_turns: int = 0
    total_turns: int = 0

    @property
    def truncated(self) -> bool:
        return self.kept_turns < self.total_turns


def check_messages(messages: Sequence[dict], *, ends_with: str) -> None:
    """Raise ChatMessagesError unless ``messages`` is a list of {"role", "content"} string dicts with
    roles in :data:`ROLES`, a user turn, and a last turn of role ``ends_with`` ("user" or "assistant")."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ChatMessagesError("chat messages must be a non-empty list of {'role', 'content'} dicts")
    for number, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise ChatMessagesError(f"chat message {number} must be a dict with string 'role' and 'content'")
        if message["role"] not in ROLES:
            raise ChatMessagesError(f"chat message {number} has role {message['role']!r}; roles are {ROLES}")
        if VIDEO_MARKER in message["content"]:
            raise ChatMessagesError(f"chat message {number} contains the reserved text {VIDEO_MARKER!r}")
    if not any(m["role"] == "user" for m in messages):
        raise ChatMessagesError("chat messages contain no 'user' turn to attach the video to")
    if messages[-1]["role"] != ends_with:
        raise ChatMessagesError(f"the last chat message must be a '{ends_with}' turn")


def recent_turns(turns: Sequence[dict], max_exchanges: int) -> list[dict]:
    """The history a chat keeps in its prompt: the turns from the ``max_exchanges``-th last user turn
    on (all of them when there are fewer user turns)."""
    user_positions = [i for i, turn in enumerate(turns) if turn["role"] == "user"]
    if len(user_positions) > max_exchanges:
        return list(turns[user_positions[-max_exchanges] :])
    return list(turns)


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _end_of_turn(ids: list[int], end_ids: Collection[int]) -> int:
    """Length of a reply's labelled part: through its last end-of-turn token, else all of it."""
    for index in range(len(ids) - 1, -1, -1):
        if ids[index] in end_ids:
            return index + 1
    return len(ids)


def _pieces(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], add_generation_prompt: bool
) -> tuple[str, list[tuple[str, bool]]]:
    """(text before the video, [(text, is_assistant_reply), ...] after it)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatMessagesError(f"the tokenizer {type(tokenizer).__name__} has no chat template")
    marked = [dict(m) for m in messages]
    first_user = next(i for i, m in enumerate(marked) if m["role"] == "user")
    marked[first_user]["content"] = VIDEO_MARKER + marked[first_user]["content"]
    full = _render(tokenizer, marked, add_generation_prompt)
    if full.count(VIDEO_MARKER) != 1:
        raise ChatMessagesError("the chat template did not render the first user turn verbatim")
    # character spans of the assistant replies: each starts where the conversation before it, rendered
    # with the generation prompt, ends, and ends where the conversation through it ends
    spans = []
    for index, message in enumerate(marked):
        if message["role"] != "assistant" or index <= first_user:
            continue
        start_text = _render(tokenizer, marked[:index], True)
        end_text = _render(tokenizer, marked[: index + 1], False)
        if not (full.startswith(start_text) and full.startswith(end_text) and len(end_text) > len(start_text)):
            raise ChatMessagesError(
                "the chat template does not render a conversation turn by turn (a prefix of the "
                "conversation renders differently from the start of the whole one)"
            )
        spans.append((len(start_text), len(end_text)))
    video_at = full.index(VIDEO_MARKER)
    after_start = video_at + len(VIDEO_MARKER)
    pieces, cursor = [], after_start
    for start, end in spans:
        if start < cursor:
            raise ChatMessagesError("an assistant turn renders before the video")
        pieces.append((full[cursor:start], False))
        pieces.append((full[start:end], True))
        cursor = end
    pieces.append((full[cursor:], False))
    return full[:video_at], pieces


def chat_inference_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> ChatIds:
    """A chat ending with a user turn, with the template's generation prompt: what the LLM continues
    with the assistant's reply. Earlier assistant turns are tokenised as in training."""
    check_messages(messages, ends_with="user")
    before, pieces = _pieces(tokenizer, messages, add_generation_prompt=True)
    suffix = [token for text, _ in pieces for token in text_ids(tokenizer, text)]
    return ChatIds(tuple(text_ids(tokenizer, before)), tuple(suffix), (IGNORE_INDEX,) * len(suffix))


def chat_training_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict],
    end_of_turn_ids: Collection[int],
    max_target_tokens: int | None = None,
) -> ChatIds:
    """A whole conversation (ending with an assistant turn) with labels on the assistant replies.

    end_of_turn_ids: token ids that end a reply (the LLM's stop ids); a reply is labelled through
        its last one, and the template text after it is not.
    max_target_tokens: at most this many labelled tokens: whole assistant turns are kept from the
        start while they fit, the rest of the conversation is dropped; a first reply longer than the
        limit alone is cut to it (``kept_turns`` 0).
    """
    check_messages(messages, ends_with="assistant")
    before, pieces = _pieces(tokenizer, messages, add_generation_prompt=False)
    suffix: list[int] = []
    labels: list[int] = []
    total_turns = sum(1 for _, is_reply in pieces if is_reply)
    kept_turns, labelled = 0, 0
    for text, is_reply in pieces:
        ids = text_ids(tokenizer, text)
        if not is_reply:
            suffix += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        reply = _end_of_turn(ids, end_of_turn_ids)
        if max_target_tokens is not None and labelled + reply > max_target_tokens:
            if kept_turns == 0:  # the first reply alone is too long: keep its first tokens
                cut = max_target_tokens - labelled
                suffix += ids[:cut]
                labels += ids[:cut]
            break
        suffix += ids
        labels += ids[:reply] + [IGNORE_INDEX] * (len(ids) - reply)
        labelled += reply
        kept_turns += 1
    # nothing after the last labelled token matters to the loss
    while labels and labels[-1] == IGNORE_INDEX:
        labels.pop()
        suffix.pop()
    return ChatIds(tuple(text_ids(tokenizer, before)), tuple(suffix), tuple(labels), kept_turns, total_turns)
