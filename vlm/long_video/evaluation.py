"""Scoring long-video answers against ground-truth timelines (the long shapes videos of
``prism-vlm make-long-shapes``), each score with its chance level.

- timeline colour accuracy per second: at the middle of every second of the video, the first colour the
  timeline's caption names is one of the colours on screen then (chance: the share of the palette on screen);
- find R@1 / R@5 at IoU >= 0.5 (the Charades-STA protocol), the queries being the segments' captions
  (chance: a random window-long span, placed uniformly);
- "When does the <colour> object appear?" for colours on screen in one segment only: the middle of the
  first span the reply names lies inside that segment, give or take the half second a whole-second time
  rounds off (chance: the segment's share of the video);
- "What colour is the object at <time>?" at the middle of every one-object segment: the reply names that
  colour and no other (chance: one palette colour in eight).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from vlm.long_video.moments import Moment
from vlm.long_video.timeline import TimelineSegment, clock
from vlm.shapes.chat_eval import named_answers
from vlm.shapes.language import ANSWER_VOCABULARY

_SPAN = re.compile(r"(?:(\d+):)?(\d+):(\d{2})\s*-\s*(?:(\d+):)?(\d+):(\d{2})")


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal intersection over union of two spans (seconds)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def first_named_span(reply: str) -> tuple[float, float] | None:
    """The first ``m:ss-m:ss`` (or ``h:mm:ss-h:mm:ss``) span a reply names, in seconds, or None."""
    match = _SPAN.search(reply)
    if not match:
        return None
    h1, m1, s1, h2, m2, s2 = match.groups()
    return (int(h1 or 0) * 3600 + int(m1) * 60 + int(s1), int(h2 or 0) * 3600 + int(m2) * 60 + int(s2))


def first_colour(caption: str) -> str | None:
    """The first palette colour a caption names (None: none)."""
    words = re.findall(r"[a-z]+", caption.lower())
    return next((word for word in words if word in ANSWER_VOCABULARY["colour"]), None)


def timeline_colour_accuracy(truth, timeline: Sequence[TimelineSegment]) -> tuple[int, int, float]:
    """(right seconds, seconds, chance share) of the timeline's colours against ``truth`` (a LongVideoTruth)."""
    from vlm.shapes import segment_at

    palette = len(ANSWER_VOCABULARY["colour"])
    right = total = 0
    chance = 0.0
    for second in range(int(truth.duration)):
        t = second + 0.5
        segment = segment_at(truth, t)
        named = next((s for s in timeline if s.start <= t < s.end), None)
        if segment is None:
            continue
        total += 1
        chance += len(set(segment.colours)) / palette
        right += named is not None and first_colour(named.caption) in segment.colours
    return right, total, chance


def recall_at_iou(moments: Sequence[Moment], target: tuple[float, float], k: int, threshold: float = 0.5) -> bool:
    return any(iou((m.start, m.end), target) >= threshold for m in moments[:k])


def random_span_recall(
    duration: float,
    length: float,
    target: tuple[float, float],
    threshold: float = 0.5,
    samples: int = 2000,
    seed: int = 0,
) -> float:
    """The chance that a span of ``length`` seconds placed uniformly in the video reaches IoU >= threshold."""
    rng = np.random.default_rng(seed)
    starts = rng.uniform(0, max(duration - length, 0.0), samples)
    return float(np.mean([iou((s, s + length), target) >= threshold for s in starts]))


def when_reply_is_right(reply: str, segment) -> bool:
    """The middle of the first span the reply names lies inside ``segment`` (half a second of slack on either
    side: replies name whole seconds)."""
    span = first_named_span(reply)
    return span is not None and segment.start - 0.5 <= (span[0] + span[1]) / 2 < segment.end + 0.5


def colour_reply_is_right(reply: str, colour: str) -> bool:
    return named_answers(reply, "colour") == {colour}


def when_question(colour: str) -> str:
    return f"When does the {colour} object appear?"


def colour_question(time_s: float) -> str:
    return f"What colour is the object at {clock(time_s)}?"


def score_long_video(
    truth,
    *,
    timeline: Sequence[TimelineSegment] | None,
    find: Callable[[str], list[Moment]] | None,
    ask: Callable[[str], str] | None,
    window_s: float,
) -> dict:
    """Every score of one long video: ``find(text) -> moments``, ``ask(question) -> reply text``."""
    from vlm.shapes import unique_colour_segments

    result: dict = {"video": str(truth.video), "duration": truth.duration}
    if timeline is not None:
        right, total, chance = timeline_colour_accuracy(truth, timeline)
        result["timeline"] = {"right": right, "seconds": total, "chance": chance}
    if find is not None:
        rows = []
        for segment in truth.segments:
            moments = find(segment.caption)
            target = (segment.start, segment.end)
            rows.append(
                {
                    "r1": recall_at_iou(moments, target, 1),
                    "r5": recall_at_iou(moments, target, 5),
                    "chance_r1": random_span_recall(truth.duration, window_s, target),
                }
            )
        result["find"] = rows
    if ask is not None:
        when = []
        for colour, segment in sorted(unique_colour_segments(truth).items()):
            reply = ask(when_question(colour))
            when.append(
                {
                    "colour": colour,
                    "segment": [segment.start, segment.end],
                    "reply": reply,
                    "right": when_reply_is_right(reply, segment),
                    "chance": segment.duration / truth.duration,
                }
            )
        colour_rows = []
        for segment in truth.segments:
            if segment.count != 1:
                continue
            time_s = (segment.start + segment.end) / 2
            reply = ask(colour_question(time_s))
            colour_rows.append(
                {
                    "time": time_s,
                    "colour": segment.colours[0],
                    "reply": reply,
                    "right": colour_reply_is_right(reply, segment.colours[0]),
                }
            )
        result["when"], result["colour_at"] = when, colour_rows
    return result


def summarise(results: Sequence[dict]) -> dict:
    """Totals over videos: each score as a percentage with its chance."""
    summary: dict = {"videos": len(results), "seconds": sum(r["duration"] for r in results)}
    timelines = [r["timeline"] for r in results if "timeline" in r]
    if timelines:
        seconds = sum(t["seconds"] for t in timelines)
        summary["timeline_colour_accuracy"] = 100 * sum(t["right"] for t in timelines) / seconds
        summary["timeline_colour_chance"] = 100 * sum(t["chance"] for t in timelines) / seconds
    finds = [row for r in results for row in r.get("find", [])]
    if finds:
        summary["find_queries"] = len(finds)
        summary["find_r1_iou0.5"] = 100 * np.mean([row["r1"] for row in finds])
        summary["find_r5_iou0.5"] = 100 * np.mean([row["r5"] for row in finds])
        summary["find_r1_chance"] = 100 * np.mean([row["chance_r1"] for row in finds])
    when = [row for r in results for row in r.get("when", [])]
    if when:
        summary["when_questions"] = len(when)
        summary["when_accuracy"] = 100 * np.mean([row["right"] for row in when])
        summary["when_chance"] = 100 * np.mean([row["chance"] for row in when])
    colour = [row for r in results for row in r.get("colour_at", [])]
    if colour:
        summary["colour_at_questions"] = len(colour)
        summary["colour_at_accuracy"] = 100 * np.mean([row["right"] for row in colour])
        summary["colour_at_chance"] = 100 / len(ANSWER_VOCABULARY["colour"])
    return summary
