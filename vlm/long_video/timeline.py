"""A long video's timeline: every window captioned by the glue, neighbours that say the same thing merged,
written as JSON, SRT or WebVTT subtitles.

Merging rule: consecutive windows whose captions are equal after lower-casing and collapsing spaces and
trailing punctuation form one segment, from the first window's start to the last one's end, with the first
window's caption.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vlm.inference.assistant import VideoAssistant
from vlm.inference.generation import GenerationSettings
from vlm.long_video.reading import LongVideo

FORMATS = ("text", "json", "srt", "vtt")


@dataclass(frozen=True)
class TimelineSegment:
    """A stretch of the video and what it shows: start, end in seconds; caption."""

    start: float
    end: float
    caption: str

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "caption": self.caption}


def _same_caption_key(caption: str) -> str:
    return re.sub(r"\s+", " ", caption.lower()).strip().rstrip(".!?,;: ")


def window_captions(
    assistant: VideoAssistant,
    video: LongVideo,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    generation: GenerationSettings | None = None,
    run: Callable[[Callable[[], list[str]]], list[str]] | None = None,
) -> list[str]:
    """One caption per window of ``video`` (read with the glue), ``batch_size`` windows per generate().
    ``run``: calls each batch's generation (``run(work)`` returns ``work()``; default: here), e.g. in a
    server's model thread so that other requests run between batches."""
    run = run if run is not None else (lambda work: work())
    captions: list[str] = []
    for _, features in video.iter_glue_batches(batch_size):
        captions += run(
            lambda features=features: assistant.caption(
                video_features=features, max_new_tokens=max_new_tokens, generation=generation
            )
        )
    return captions


def merge_windows(spans: Sequence[Sequence[float]], captions: Sequence[str]) -> list[TimelineSegment]:
    """Windows (spans [N, 2] in seconds, N captions) as segments, neighbours with the same caption merged."""
    if len(spans) != len(captions):
        raise ValueError(f"{len(spans)} windows but {len(captions)} captions")
    segments: list[TimelineSegment] = []
    for (start, end), caption in zip(spans, captions):
        previous = segments[-1] if segments else None
        if previous is not None and _same_caption_key(previous.caption) == _same_caption_key(caption):
            segments[-1] = TimelineSegment(previous.start, float(end), previous.caption)
        else:
            segments.append(TimelineSegment(float(start), float(end), caption))
    return segments


def make_timeline(
    assistant: VideoAssistant,
    video: LongVideo,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    generation: GenerationSettings | None = None,
    run: Callable[[Callable[[], list[str]]], list[str]] | None = None,
) -> list[TimelineSegment]:
    """The timeline of ``video``: :func:`window_captions` (each batch through ``run``) merged by
    :func:`merge_windows`."""
    captions = window_captions(assistant, video, batch_size, max_new_tokens, generation, run)
    return merge_windows(video.spans.tolist(), captions)


def clock(seconds: float) -> str:
    """A time as a person writes it: ``m:ss`` under an hour, ``h:mm:ss`` from an hour on (whole seconds,
    rounded down)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _subtitle_time(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def format_timeline(segments: Sequence[TimelineSegment], fmt: str = "text") -> str:
    """The timeline as ``text`` (one ``m:ss-m:ss caption`` line per segment), ``json`` (a list of
    ``{"start", "end", "caption"}``), ``srt`` or ``vtt`` (WebVTT) subtitles."""
    if fmt == "text":
        return "".join(f"{clock(s.start)}-{clock(s.end)}\t{s.caption}\n" for s in segments)
    if fmt == "json":
        return json.dumps([s.to_dict() for s in segments], indent=2) + "\n"
    if fmt == "srt":
        blocks = [
            f"{i}\n{_subtitle_time(s.start, ',')} --> {_subtitle_time(s.end, ',')}\n{s.caption}\n"
            for i, s in enumerate(segments, 1)
        ]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [f"{_subtitle_time(s.start, '.')} --> {_subtitle_time(s.end, '.')}\n{s.caption}\n" for s in segments]
        return "WEBVTT\n\n" + "\n".join(blocks)
    raise ValueError(f"unknown timeline format {fmt!r}; choose one of {', '.join(FORMATS)}")


def timeline_in_words(segments: Sequence[TimelineSegment]) -> str:
    """The timeline as a reply: ``"0:00-0:08: a red star moving left. 0:08-0:16: ..."``."""
    return " ".join(f"{clock(s.start)}-{clock(s.end)}: {s.caption.rstrip('.')}." for s in segments)
