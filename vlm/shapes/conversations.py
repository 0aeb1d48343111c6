"""Multi-turn conversations about the moving-shapes clips, from their attributes: the instruction
data that teaches the glue to answer inside the LLM's chat template.

A conversation has 3 to 5 exchanges in natural language, each a question and a one-sentence reply:
colour ("What colour is the star?" -> "The star is cyan."), shape, motion, count ("How many shapes
are there?" -> "There are two shapes: a green cross and a blue circle."), a description (one of the
clip's captions as a sentence), a yes/no check of a colour, follow-ups that refer back to the object
of the previous exchange ("And how is it moving?" -> "It is moving down."; in two-object clips "What
about the other one?"), and now and then a question the clip cannot answer ("What is the person
doing?" -> "I cannot tell that from the video. It only shows ..."). Replies name the canonical
answer words of ``vlm.shapes.language`` (colours, shapes, ``moving left`` ... ``staying still``,
``one``/``two``), so a reply can be scored by the words it names.

Deterministic: a function of the clip's attributes, its captions and the rng (the corpus draws it
from ``[seed, index, stream]``).
"""

from __future__ import annotations

import numpy as np

from vlm.shapes.render import PALETTE, ClipAttributes, ObjectAttributes

MOTION_REPLIES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "growing": "growing",
    "shrinking": "shrinking",
    "rotating": "rotating {rotation}",
    "still": "staying still",
}
DESCRIBE_QUESTIONS = (
    "Describe the video.",
    "What happens in the video?",
    "What do you see?",
    "Describe what you see in this clip.",
    "Give a short description of the video.",
)
COUNT_QUESTIONS = ("How many shapes are there?", "How many objects are in the video?", "How many objects are there?")
OUT_OF_WORLD_QUESTIONS = (
    "What is the person doing?",
    "What sound can you hear?",
    "Where was this video filmed?",
    "What time of day is it?",
    "Who is in the video?",
    "What is the weather like?",
    "What does the text say?",
    "What is the man holding?",
    "Which animal is in the video?",
    "What language are they speaking?",
)
MIN_EXCHANGES, MAX_EXCHANGES = 3, 5


def _pick(options, rng: np.random.Generator):
    return options[int(rng.integers(len(options)))]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _motion(obj: ObjectAttributes) -> str:
    return MOTION_REPLIES[obj.motion].format(rotation=obj.rotation or "").strip()


def _colour_word(rng: np.random.Generator) -> str:
    return _pick(("colour", "color"), rng)


class _Exchanges:
    """The question/reply generators of one clip; each returns (question, reply, object referred to)."""

    def __init__(self, clip: ClipAttributes, clip_captions: list[str], rng: np.random.Generator):
        self.clip, self.captions, self.rng = clip, clip_captions, rng
        self.objects = clip.objects
        self.single = len(self.objects) == 1

    def _object(self) -> ObjectAttributes:
        return self.objects[int(self.rng.integers(len(self.objects)))]

    def colour(self, _previous):
        obj, word = self._object(), _colour_word(self.rng)
        if self.single:
            question = _pick(
                (
                    f"What {word} is the object?",
                    f"What {word} is the {obj.shape}?",
                    f"What {word} is the shape?",
                    f"Which {word} is it?",
                ),
                self.rng,
            )
            subject = f"the {obj.shape}" if obj.shape in question else "the object" if "object" in question else "it"
        else:
            question = _pick((f"What {word} is the {obj.shape}?", f"Which {word} is the {obj.shape}?"), self.rng)
            subject = f"the {obj.shape}"
        return question, _sentence(f"{subject} is {obj.colour}"), obj

    def shape(self, _previous):
        obj = self._object()
        if self.single:
            question = _pick(
                (
                    "What shape is it?",
                    f"What shape is the {obj.colour} object?",
                    "Which shape is shown?",
                    "What shape do you see?",
                ),
                self.rng,
            )
            reply = (
                f"It is {_a(obj.shape)}."
                if "it?" in question
                else _sentence(f"the {obj.colour} object is {_a(obj.shape)}")
            )
        else:
            question = _pick(
                (f"What shape is the {obj.colour} one?", f"What shape is the {obj.colour} object?"), self.rng
            )
            reply = _sentence(f"the {obj.colour} one is {_a(obj.shape)}")
        return question, reply, obj

    def motion(self, _previous):
        obj = self.objects[0]
        if self.single:
            question = _pick(
                (
                    f"How is the {obj.shape} moving?",
                    "How is the object moving?",
                    "What is the object doing?",
                    "What does the shape do?",
                ),
                self.rng,
            )
            subject = (
                f"the {obj.shape}" if obj.shape in question else "the object" if "object" in question else "the shape"
            )
            return question, _sentence(f"{subject} is {_motion(obj)}"), obj
        question = _pick(
            ("How are the shapes moving?", "What are the objects doing?", "How are the objects moving?"), self.rng
        )
        return question, _sentence(f"both shapes are {_motion(obj)}"), None

    def count(self, _previous):
        question = _pick(COUNT_QUESTIONS, self.rng)
        if self.single:
            return question, "There is one shape.", self.objects[0]
        first, second = (f"{o.colour} {o.shape}" for o in self.objects)
        return question, f"There are two shapes: {_a(first)} and {_a(second)}.", None

    def describe(self, _previous):
        return _pick(DESCRIBE_QUESTIONS, self.rng), _sentence(_pick(self.captions, self.rng)), None

    def yes_no(self, _previous):
        obj = self._object()
        asked = obj.colour if self.rng.random() < 0.5 else _pick([c for c in PALETTE if c != obj.colour], self.rng)
        noun = f"the {obj.shape}" if not self.single or self.rng.random() < 0.5 else "the object"
        answer = "Yes" if asked == obj.colour else "No"
        return f"Is {noun} {asked}?", f"{answer}, {noun} is {obj.colour}.", obj

    def out_of_world(self, _previous):
        return (
            _pick(OUT_OF_WORLD_QUESTIONS, self.rng),
            f"I cannot tell that from the video. It only shows {_pick(self.captions, self.rng)}.",
            None,
        )

    def follow_up(self, previous: ObjectAttributes):
        """A question about the object of the previous exchange, referred to as "it"."""
        kinds = ["colour", "motion", "shape"]
        if not self.single:
            kinds.append("other")
        kind = _pick(kinds, self.rng)
        if kind == "colour":
            return (
                _pick(("And what colour is it?", "What color is it?", "Which colour does it have?"), self.rng),
                f"It is {previous.colour}.",
                previous,
            )
        if kind == "motion":
            return (
                _pick(("And how is it moving?", "What is it doing?", "How does it move?"), self.rng),
                f"It is {_motion(previous)}.",
                previous,
            )
        if kind == "shape":
            return (
                _pick(("And what shape is it?", "Which shape is it?"), self.rng),
                f"It is {_a(previous.shape)}.",
                previous,
            )
        other = next(o for o in self.objects if o is not previous)
        return (
            _pick(("What about the other one?", "And the other shape?"), self.rng),
            f"The other one is {_a(other.colour + ' ' + other.shape)}.",
            other,
        )


def conversation(clip: ClipAttributes, clip_captions: list[str], rng: np.random.Generator) -> list[dict]:
    """A conversation about the clip as chat messages: [{"role": "user"|"assistant", "content"}, ...]
    (MIN_EXCHANGES to MAX_EXCHANGES exchanges; no video marker -- the glue adds the video)."""
    exchanges = _Exchanges(clip, clip_captions, rng)
    openers = ("describe", "colour", "shape", "motion", "count", "yes_no")
    later = ("describe", "colour", "shape", "motion", "count", "yes_no", "out_of_world")
    count = int(rng.integers(MIN_EXCHANGES, MAX_EXCHANGES + 1))
    messages, used, previous = [], set(), None
    for number in range(count):
        if previous is not None and rng.random() < 0.4:
            kind = "follow_up"
        else:
            choices = [k for k in (openers if number == 0 else later) if k not in used]
            kind = _pick(choices, rng)
            used.add(kind)
        question, reply, previous = getattr(exchanges, kind)(previous)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return messages


def llava_conversation(messages: list[dict]) -> list[dict]:
    """The same conversation in LLaVA's layout, with the ``<video>`` marker opening the first turn."""
    turns = []
    for number, message in enumerate(messages):
        value = ("<video>\n" + message["content"]) if number == 0 else message["content"]
        turns.append({"from": "human" if message["role"] == "user" else "gpt", "value": value})
    return turns
