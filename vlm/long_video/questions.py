"""Questions about a long video, answered from the windows they concern, the reply naming the times used.

The last user message decides which part of the video is read (first rule that applies):

1. It names a time ("at 1:04", "0:16", "at 75 s"): the clip of ``moment_s`` seconds centred there is
   decoded and the question, without the time, goes to the glue: "At 1:03-1:05: <reply>".
2. It asks when something happens ("When does the red object appear?"): the thing is found with the
   video-text model (:func:`vlm.long_video.moments.find_moments`, its phrasings averaged:
   :func:`query_phrasings`): "At 0:16-0:20." (and "also at ..." for other spans that match nearly as well).
3. It asks what happens after or before something ("What happens after the star?"): that thing is found,
   and the window right after (before) it is described: "After the star (0:16-0:20), at 0:20-0:28: <caption>."
4. It asks about the whole video ("Describe the video", "What happens in the video?", "Summarise it"):
   the timeline in words, with times.
5. Anything else: the glue's window holding the video-text window most similar to the question answers it:
   "At 0:24-0:32: <reply>".

Each long-video question is answered on its own (earlier turns are not in the glue's prompt: they were
about other windows). A video of one window is not a long video: ask it as a clip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from encoder.video.decode import load_clip
from vlm.inference.assistant import VideoAssistant
from vlm.inference.generation import GenerationSettings
from vlm.long_video.moments import find_moments, moments_from_scores, window_scores
from vlm.long_video.reading import LongVideo
from vlm.long_video.timeline import clock, make_timeline, timeline_in_words
from vlm.prompts import ChatMessagesError

MOMENT_S = 2.0  # the clip read around a time the question names
ALSO_WITHIN = 0.9  # another span is "also" reported when its score is within this share of the best one's margin

_CLOCK = re.compile(r"\b(?:(\d{1,2}):)?(\d{1,2}):(\d{2})(?:\.\d+)?\b")
_SECONDS = re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:s|sec|secs|second|seconds)\b", re.IGNORECASE)
_TIME_PHRASE = re.compile(
    r"\s*\b(?:at|around|about|near|by)?\s*(?:(?:\d{1,2}:)?\d{1,2}:\d{2}(?:\.\d+)?|\d+(?:\.\d+)?\s*(?:s|sec|secs|"
    r"second|seconds))\b(?:\s*(?:in|into)\s+the\s+video)?",
    re.IGNORECASE,
)
_WHEN = re.compile(
    r"^\s*(?:when|at what (?:time|point|moment)|what time)\s+(?:does|do|did|is|are|was|were|will|can)?\s*(.*?)"
    r"\s*(?:appear|appears|show up|shows up|come|comes|happen|happens|start|starts|begin|begins|enter|enters|"
    r"occur|occurs|seen|visible|on screen)?\s*\??\s*$",
    re.IGNORECASE,
)
_AFTER_BEFORE = re.compile(
    r"^\s*what\s+(?:happens|happened|comes|came|is shown|do we see)\s+(after|before)\s+(.+?)\s*\??\s*$", re.IGNORECASE
)
_WHOLE = re.compile(
    r"\b(describe|summari[sz]e|summary|overview|timeline)\b|\bwhat happens (?:in|over|during|throughout)\b"
    r"|\b(?:whole|entire|full) video\b",
    re.IGNORECASE,
)


@dataclass
class LongVideoReply:
    """A reply to a question about a long video: text, and the spans (start, end) in seconds it was read from."""

    text: str
    spans: list[tuple[float, float]] = field(default_factory=list)
    rule: str = ""


def named_time(question: str) -> float | None:
    """The first time a question names, in seconds ("1:04" -> 64.0, "1:02:03", "75 s"), or None."""
    match = _CLOCK.search(question)
    if match:
        hours, minutes, secs = match.groups()
        return int(hours or 0) * 3600 + int(minutes) * 60 + int(secs)
    match = _SECONDS.search(question)
    return float(match.group(1)) if match else None


def without_time(question: str) -> str:
    """The question with the time it names taken out ("What colour is the object at 1:04?" -> "What colour is
    the object?")."""
    text = _TIME_PHRASE.sub("", question)
    return re.sub(r"\s+([?.!,])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()


_GENERIC_NOUN = re.compile(r"\b(object|thing|item|shape)(s?)\b", re.IGNORECASE)


def query_phrasings(thing: str) -> list[str]:
    """What the video-text model is asked for, as phrasings whose embeddings are averaged: "the red object"
    -> ["a red object", "a red shape", "a red shape moving"] (a generic noun also said the way captions
    say it); a specific thing ("the star") as itself ("a star")."""
    thing = thing.strip().rstrip("?.! ")
    base = re.sub(r"^(the|this|that)\s+", "a ", thing, flags=re.IGNORECASE) or thing
    if not _GENERIC_NOUN.search(base):
        return [base]
    as_object = _GENERIC_NOUN.sub(lambda m: "object" + m.group(2), base, count=1)
    as_shape = _GENERIC_NOUN.sub(lambda m: "shape" + m.group(2), base, count=1)
    return list(dict.fromkeys([as_object, as_shape, as_shape + " moving"]))


def _last_user_text(messages) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    raise ChatMessagesError("no user message to answer")


class LongVideoQA:
    """Answers questions about one long video (:class:`LongVideo`, read with the glue and the video-text
    model) with ``assistant`` and ``video_text_model``."""

    def __init__(
        self,
        assistant: VideoAssistant,
        video_text_model,
        video: LongVideo,
        *,
        moment_s: float = MOMENT_S,
        max_new_tokens: int = 64,
        generation: GenerationSettings | None = None,
        batch_size: int = 8,
    ):
        if video.embeddings is None:
            raise ValueError("a long video is asked about with its video-text embeddings (read it with both models)")
        self.assistant, self.video_text_model, self.video = assistant, video_text_model, video
        self.moment_s, self.max_new_tokens, self.generation = moment_s, max_new_tokens, generation
        self.batch_size = batch_size
        self._timeline = None

    def reply(self, messages) -> LongVideoReply:
        """The reply to the last user message of ``messages`` (chat messages), by the rules of the module."""
        question = " ".join(_last_user_text(messages).split())
        if not question:
            raise ChatMessagesError("the message is empty")
        time_s = named_time(question)
        if time_s is not None:
            return self._at_time(question, time_s)
        match = _AFTER_BEFORE.match(question)
        if match:
            return self._after_before(match.group(1).lower(), match.group(2))
        match = _WHEN.match(question)
        if match and match.group(1).strip():
            return self._when(match.group(1))
        if _WHOLE.search(question):
            return self._whole()
        return self._best_window(question)

    # ------------------------------------------------------------------ the rules

    def _chat(self, question: str, features: torch.Tensor) -> str:
        return self.assistant.chat(
            [{"role": "user", "content": question}],
            video_features=features,
            max_new_tokens=self.max_new_tokens,
            generation=self.generation,
        ).strip()

    def _moment_features(self, time_s: float) -> tuple[float, float, torch.Tensor]:
        """The clip of ``moment_s`` seconds centred on ``time_s`` (inside the video): (start, end, its soft
        prompt [1, L, H])."""
        duration = self.video.duration
        start = max(0.0, min(time_s - self.moment_s / 2, duration - self.moment_s))
        end = min(duration, start + self.moment_s)
        config = self.assistant.config
        clip = load_clip(self.video.path, config.num_frames, config.frame_size, start, end)
        with torch.inference_mode():
            features = self.assistant.model.get_video_features(clips=torch.from_numpy(clip[None]))
        return start, end, features

    def _best_window_index(self, question: str) -> int:
        """The glue window holding the middle of the video-text window most similar to ``question``."""
        best = int(np.argmax(window_scores(self.video_text_model, self.video, question).numpy()))
        return self.video.window_at(float(self.video.text_spans[best].mean()))

    def _at_time(self, question: str, time_s: float) -> LongVideoReply:
        if time_s > self.video.duration:
            text = f"The video is only {clock(self.video.duration)} long; {clock(time_s)} is after its end."
            return LongVideoReply(text, [], "time")
        start, end, features = self._moment_features(time_s)
        text = self._chat(without_time(question) or question, features)
        return LongVideoReply(f"At {clock(start)}-{clock(end)}: {text}", [(start, end)], "time")

    def rank(self, question: str, candidates) -> tuple[tuple[float, float], list]:
        """Closed-vocabulary: the candidates ranked (:meth:`VideoAssistant.score_answers`) on the moment the
        question names, else on the window most similar to it. Returns ((start, end), ranked answers)."""
        question, (start, end), features = self.moment(question)
        return (start, end), self.assistant.score_answers(question, candidates, video_features=features)

    def moment(self, question: str) -> tuple[str, tuple[float, float], torch.Tensor]:
        """What a closed question is asked on: the moment it names (the question then without the time), else
        the glue window most similar to it. Returns (question, (start, end) seconds, soft prompt [1, L, H])."""
        question = " ".join(question.split())
        time_s = named_time(question)
        if time_s is not None and time_s <= self.video.duration:
            start, end, features = self._moment_features(time_s)
            return without_time(question) or question, (start, end), features
        index = self._best_window_index(question)
        start, end = (float(t) for t in self.video.spans[index])
        return question, (start, end), self.video.glue_features([index])

    def _when(self, thing: str) -> LongVideoReply:
        scores = window_scores(self.video_text_model, self.video, query_phrasings(thing)).numpy()
        median = float(np.median(scores))
        moments = moments_from_scores(self.video, scores, top_k=3)
        best = moments[0]
        also = [m for m in moments[1:] if m.score - median >= ALSO_WITHIN * (best.score - median)]
        text = f"At {clock(best.start)}-{clock(best.end)}."
        if also:
            text = text[:-1] + ", and also at " + ", ".join(f"{clock(m.start)}-{clock(m.end)}" for m in also) + "."
        return LongVideoReply(text, [(m.start, m.end) for m in [best, *also]], "when")

    def _after_before(self, which: str, thing: str) -> LongVideoReply:
        anchor = find_moments(self.video_text_model, self.video, query_phrasings(thing), top_k=1)[0]
        window = self.video.window_s
        if which == "after":
            start, end = anchor.end, min(self.video.duration, anchor.end + window)
        else:
            start, end = max(0.0, anchor.start - window), anchor.start
        found = f"{thing.strip().rstrip('?.! ')} ({clock(anchor.start)}-{clock(anchor.end)})"
        if end - start < 0.5:
            edge = "end" if which == "after" else "start"
            return LongVideoReply(
                f"{which.capitalize()} {found} the video is at its {edge}.", [(anchor.start, anchor.end)], which
            )
        config = self.assistant.config
        clip = load_clip(self.video.path, config.num_frames, config.frame_size, start, end)
        caption = self.assistant.caption(clips=clip[None], max_new_tokens=self.max_new_tokens)[0]
        return LongVideoReply(
            f"{which.capitalize()} {found}, at {clock(start)}-{clock(end)}: {caption}.",
            [(anchor.start, anchor.end), (start, end)],
            which,
        )

    def _whole(self) -> LongVideoReply:
        if self._timeline is None:
            self._timeline = make_timeline(self.assistant, self.video, self.batch_size)
        return LongVideoReply(timeline_in_words(self._timeline), [(s.start, s.end) for s in self._timeline], "whole")

    def _best_window(self, question: str) -> LongVideoReply:
        index = self._best_window_index(question)
        start, end = (float(t) for t in self.video.spans[index])
        text = self._chat(question, self.video.glue_features([index]))
        return LongVideoReply(f"At {clock(start)}-{clock(end)}: {text}", [(start, end)], "window")
