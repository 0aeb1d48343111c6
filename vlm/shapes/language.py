"""Captions and question-answer pairs of the moving-shapes clips, from their attributes.

Every answer is one word from :data:`ANSWER_VOCABULARY`, chosen so that it is ONE token for the
SmolLM2 tokenizer after a space (as the glue scores it: ``vlm.prompts.answer_continuation``).

Questions are unambiguous by construction: a clip has one object, or two objects with different
shapes AND different colours that share one motion. So in a two-object clip a colour question names
the object by its shape ("what colour is the star?"), a shape question by its colour ("what shape is
the red one?"), and a motion question asks about both ("how are the shapes moving?").
"""

from __future__ import annotations

import numpy as np

from vlm.shapes.render import MOTIONS, PALETTE, ROTATION_DIRECTIONS, SHAPES, ClipAttributes

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "motion", "count")
COUNT_WORDS: tuple[str, ...] = ("one", "two")
ANSWER_VOCABULARY: dict[str, tuple[str, ...]] = {
    "colour": tuple(PALETTE),
    "shape": SHAPES,
    "motion": MOTIONS,
    "count": COUNT_WORDS,
}
# Every answer word once, in vocabulary order: the closed-vocabulary candidates pooled over question types.
ALL_ANSWERS: tuple[str, ...] = tuple(dict.fromkeys(word for words in ANSWER_VOCABULARY.values() for word in words))

# Motion phrases: progressive ("a red circle moving left") and third person ("the red circle moves left").
_PROGRESSIVE: dict[str, tuple[str, ...]] = {
    "left": ("moving left", "moving to the left", "sliding left", "moving from right to left"),
    "right": ("moving right", "moving to the right", "sliding right", "moving from left to right"),
    "up": ("moving up", "moving upwards", "rising", "moving from bottom to top"),
    "down": ("moving down", "moving downwards", "falling", "moving from top to bottom"),
    "growing": ("growing", "getting bigger", "growing larger", "expanding"),
    "shrinking": ("shrinking", "getting smaller", "shrinking in size", "contracting"),
    "rotating": ("rotating", "spinning", "rotating {rotation}", "turning {rotation}"),
    "still": ("staying still", "not moving", "standing still", "resting in place"),
}
_THIRD_PERSON: dict[str, tuple[str, ...]] = {
    "left": ("moves left", "slides to the left", "moves from right to left", "drifts left"),
    "right": ("moves right", "slides to the right", "moves from left to right", "drifts right"),
    "up": ("moves up", "rises", "moves upwards", "travels from bottom to top"),
    "down": ("moves down", "falls", "moves downwards", "travels from top to bottom"),
    "growing": ("grows", "gets bigger", "expands", "grows larger"),
    "shrinking": ("shrinks", "gets smaller", "contracts", "shrinks in size"),
    "rotating": ("rotates", "spins", "rotates {rotation}", "turns {rotation}"),
    "still": ("stays still", "does not move", "rests in place", "stays where it is"),
}

_ONE_OBJECT_CAPTIONS: tuple[str, ...] = (
    "{a_obj} {ing}",
    "{a_sized_obj} {s3} on a noisy background",
    "the {obj} {s3}",
    "there is {a_obj} {ing}",
    "a video of {a_obj} that {s3}",
    "{a_sized_obj} {ing} on a textured grey background",
    "one {obj} {ing}",
)
_TWO_OBJECT_CAPTIONS: tuple[str, ...] = (
    "{a_obj1} and {a_obj2} {ing}",
    "two shapes, {a_obj1} and {a_obj2}, {ing} on a noisy background",
    "{a_obj1} and {a_obj2}, both {ing}",
    "there are two shapes {ing}: {a_obj1} and {a_obj2}",
    "a video of two objects, {a_obj1} and {a_obj2}, {ing}",
    "two objects {ing}, {a_obj1} and {a_obj2}",
)

_COLOUR_WORDS = ("colour", "color")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _phrase(options: tuple[str, ...], rng: np.random.Generator, rotation: str | None) -> str:
    return options[int(rng.integers(len(options)))].format(rotation=rotation or "")


def captions(attributes: ClipAttributes, rng: np.random.Generator, num_captions: int = 5) -> list[str]:
    """``num_captions`` different phrasings of the clip, each naming every object's colour and shape
    and the motion (and "two" for two-object clips); the size class for one-object clips whose size
    does not change, in some phrasings."""
    objects, motion = attributes.objects, attributes.motion
    rotation = objects[0].rotation
    templates = _ONE_OBJECT_CAPTIONS if len(objects) == 1 else _TWO_OBJECT_CAPTIONS
    if not 1 <= num_captions <= len(templates):
        raise ValueError(f"num_captions must be in [1, {len(templates)}], got {num_captions}")
    chosen = rng.permutation(len(templates))[:num_captions]
    result = []
    for index in sorted(int(i) for i in chosen):
        ing = _phrase(_PROGRESSIVE[motion], rng, rotation)
        s3 = _phrase(_THIRD_PERSON[motion], rng, rotation)
        if len(objects) == 1:
            obj = f"{objects[0].colour} {objects[0].shape}"
            sized = obj if motion in ("growing", "shrinking") else f"{objects[0].size} {obj}"
            text = templates[index].format(a_obj=_article(obj), a_sized_obj=_article(sized), obj=obj, ing=ing, s3=s3)
        else:
            first, second = (f"{o.colour} {o.shape}" for o in objects)
            text = templates[index].format(a_obj1=_article(first), a_obj2=_article(second), ing=ing)
        result.append(" ".join(text.split()))
    return result


def questions(attributes: ClipAttributes, rng: np.random.Generator) -> list[dict]:
    """One question of each type in :data:`QUESTION_TYPES`: ``[{"question", "answer", "type"}, ...]``."""
    objects = attributes.objects
    colour_word = _COLOUR_WORDS[int(rng.integers(2))]
    if len(objects) == 1:
        only = objects[0]
        colour_q = rng.choice(
            [
                f"what {colour_word} is the shape?",
                f"what {colour_word} is the {only.shape}?",
                f"which {colour_word} is the object?",
            ]
        )
        shape_q = rng.choice(["what shape is it?", f"what shape is the {only.colour} object?", "which shape is shown?"])
        motion_q = rng.choice(
            [
                f"how is the {only.shape} moving?",
                f"what is the {only.colour} {only.shape} doing?",
                "how is the object moving?",
            ]
        )
        colour_of, shape_of = only, only
    else:
        colour_of = objects[int(rng.integers(2))]
        shape_of = objects[int(rng.integers(2))]
        colour_q = rng.choice(
            [f"what {colour_word} is the {colour_of.shape}?", f"which {colour_word} is the {colour_of.shape}?"]
        )
        shape_q = rng.choice(
            [f"what shape is the {shape_of.colour} one?", f"what shape is the {shape_of.colour} object?"]
        )
        motion_q = rng.choice(
            ["how are the shapes moving?", "what are the objects doing?", "how are the objects moving?"]
        )
    count_q = rng.choice(
        ["how many shapes are there?", "how many objects are in the video?", "how many objects are there?"]
    )
    return [
        {"question": str(colour_q), "answer": colour_of.colour, "type": "colour"},
        {"question": str(shape_q), "answer": shape_of.shape, "type": "shape"},
        {"question": str(motion_q), "answer": attributes.motion, "type": "motion"},
        {"question": str(count_q), "answer": COUNT_WORDS[len(objects) - 1], "type": "count"},
    ]


# The motion a hard negative caption names instead of the true one: the opposite where there is one.
_OPPOSITE_MOTION: dict[str, str] = {
    "left": "right",
    "right": "left",
    "up": "down",
    "down": "up",
    "growing": "shrinking",
    "shrinking": "growing",
}


def _motion_phrase_in(caption: str, motion: str, rotation: str | None) -> tuple[str, int, dict] | None:
    """The (phrase, index, table) of ``motion`` that occurs in ``caption`` (the longest one), or None."""
    found = []
    for table in (_PROGRESSIVE, _THIRD_PERSON):
        for index, option in enumerate(table[motion]):
            phrase = " ".join(option.format(rotation=rotation or "").split())
            if phrase in caption:
                found.append((len(phrase), phrase, index, table))
    if not found:
        return None
    _, phrase, index, table = max(found, key=lambda item: item[0])
    return phrase, index, table


def hard_negative_captions(
    attributes: ClipAttributes,
    caption: str,
    rng: np.random.Generator,
    exclude_pairs: set[tuple[str, str]] | frozenset = frozenset(),
) -> list[str]:
    """Captions that do NOT describe the clip and differ from ``caption`` (one of its own phrasings) in
    what a colour-only encoder cannot see, for contrastive training with hard negatives (NegCLIP,
    Yuksekgonul et al. 2023):

    1. one object's shape replaced by a shape no object of the clip has ("a red star ..." -> "a red
       heart ..."); (colour, shape) pairs in ``exclude_pairs`` (the held-out compositional pairs) are
       never named;
    2. the motion replaced by its opposite (left/right, up/down, growing/shrinking; rotating and still
       by another motion), in the same phrasing style ("moves from right to left" -> "moves from left
       to right");
    3. the motion replaced by another random motion.

    Returns [shape negative, opposite-motion negative, other-motion negative]. Raises ValueError when
    ``caption`` does not name the clip's objects and motion the way :func:`captions` writes them.
    """
    objects, motion = attributes.objects, attributes.motion
    rotation = objects[0].rotation
    present = {o.shape for o in objects}
    target = objects[int(rng.integers(len(objects)))]
    named = f"{target.colour} {target.shape}"
    if named not in caption:
        raise ValueError(f"caption {caption!r} does not name the clip's {named}")
    shapes = [s for s in SHAPES if s not in present and (target.colour, s) not in exclude_pairs]
    if not shapes:
        raise ValueError(f"no shape left to swap for the {named} (all are present or excluded)")
    shape_negative = caption.replace(named, f"{target.colour} {shapes[int(rng.integers(len(shapes)))]}", 1)

    found = _motion_phrase_in(caption, motion, rotation)
    if found is None:
        raise ValueError(f"caption {caption!r} names no phrasing of the motion {motion!r}")
    phrase, index, table = found
    others = [m for m in MOTIONS if m != motion and not (m == "rotating" and present <= {"circle"})]
    opposite = _OPPOSITE_MOTION.get(motion) or others[int(rng.integers(len(others)))]
    remaining = [m for m in others if m != opposite]
    other = remaining[int(rng.integers(len(remaining)))]

    def with_motion(new_motion: str) -> str:
        new_rotation = rotation or ROTATION_DIRECTIONS[int(rng.integers(2))]
        new_phrase = " ".join(table[new_motion][index].format(rotation=new_rotation).split())
        return caption.replace(phrase, new_phrase, 1)

    return [shape_negative, with_motion(opposite), with_motion(other)]
