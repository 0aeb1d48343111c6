"""The synthetic moving-shapes corpus (``prism-vlm make-shapes``): clips whose answers we know; and long
videos made of its clips with ground-truth timelines (``prism-vlm make-long-shapes``, :mod:`vlm.shapes.long_videos`)."""

from vlm.shapes.corpus import (
    SPLITS,
    CorpusFolderError,
    ShapesConfig,
    assign_splits,
    encode_mp4,
    heldout_pairs,
    make_shapes_corpus,
    read_attributes,
    sample_clip_attributes,
)
from vlm.shapes.labels import PROBE_ATTRIBUTES, probe_labels
from vlm.shapes.language import (
    ALL_ANSWERS,
    ANSWER_VOCABULARY,
    QUESTION_TYPES,
    captions,
    hard_negative_captions,
    questions,
)
from vlm.shapes.long_videos import (
    LongVideoTruth,
    Segment,
    make_long_videos,
    one_object_segments,
    read_long_video_truth,
    read_long_videos,
    segment_at,
    unique_colour_segments,
)
from vlm.shapes.render import (
    MOTIONS,
    PALETTE,
    SHAPES,
    ClipAttributes,
    ObjectAttributes,
    object_state,
    render_background,
    render_clip,
)

__all__ = [
    "ALL_ANSWERS",
    "ANSWER_VOCABULARY",
    "MOTIONS",
    "PALETTE",
    "PROBE_ATTRIBUTES",
    "QUESTION_TYPES",
    "SHAPES",
    "SPLITS",
    "ClipAttributes",
    "CorpusFolderError",
    "LongVideoTruth",
    "ObjectAttributes",
    "Segment",
    "ShapesConfig",
    "assign_splits",
    "captions",
    "encode_mp4",
    "hard_negative_captions",
    "heldout_pairs",
    "make_long_videos",
    "make_shapes_corpus",
    "object_state",
    "one_object_segments",
    "probe_labels",
    "questions",
    "read_attributes",
    "read_long_video_truth",
    "read_long_videos",
    "render_background",
    "render_clip",
    "sample_clip_attributes",
    "segment_at",
    "unique_colour_segments",
]
