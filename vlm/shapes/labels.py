"""Integer class labels of moving-shapes clips, for frozen-feature probes (``encoder.videoprism.probe``).

Colour and shape are properties of ONE object, so they label one-object clips only; motion and count
label every clip. Class indices follow :data:`vlm.shapes.language.ANSWER_VOCABULARY`, the same for
every split and corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlm.shapes.language import ANSWER_VOCABULARY
from vlm.shapes.render import ClipAttributes

PROBE_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "motion", "count")


def probe_labels(clips: Sequence[ClipAttributes], attribute: str) -> tuple[list[int], np.ndarray, tuple[str, ...]]:
    """Which clips an attribute labels, and their labels.

    Returns (positions in ``clips`` of the labelled clips, int64 labels ``[len(positions)]``, class
    names: label ``i`` is ``class_names[i]``).
    """
    if attribute not in PROBE_ATTRIBUTES:
        raise ValueError(f"unknown probe attribute {attribute!r}; known: {PROBE_ATTRIBUTES}")
    class_names = ANSWER_VOCABULARY[attribute]
    index = {name: i for i, name in enumerate(class_names)}
    positions, labels = [], []
    for position, clip in enumerate(clips):
        if attribute == "motion":
            value = clip.motion
        elif attribute == "count":
            value = ANSWER_VOCABULARY["count"][clip.count - 1]
        elif clip.count == 1:
            value = getattr(clip.objects[0], attribute)
        else:
            continue
        positions.append(position)
        labels.append(index[value])
    return positions, np.asarray(labels, dtype=np.int64), class_names
