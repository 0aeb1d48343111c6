"""``prism-vlm make-shapes`` and ``prism-vlm make-long-shapes``: thin layers over
:func:`vlm.shapes.corpus.make_shapes_corpus` and :func:`vlm.shapes.long_videos.make_long_videos`
(nothing heavy is imported at module level)."""

from __future__ import annotations

import argparse
import json
import time

from encoder.common.cli_arguments import FRAME_SIZE, FRAMES, NON_NEGATIVE, POSITIVE, int_range, positive_float
from encoder.common.errors import UsageError


def _fraction(text: str) -> float:
    """An argparse ``type`` accepting numbers in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _cmd_make_shapes(args: argparse.Namespace) -> int:
    from vlm.shapes.corpus import ShapesConfig, make_shapes_corpus, split_counts

    settings = dict(
        num_frames=args.frames,
        frame_size=args.size,
        fps=args.fps,
        two_object_fraction=args.two_object_fraction,
        num_heldout_pairs=args.heldout_pairs,
        compositional_fraction=args.compositional_fraction,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        num_captions=args.captions,
        crf=args.crf,
        preset=args.preset,
    )
    try:  # what ShapesConfig refuses here are the flags' values together (e.g. --val-fraction + --test-fraction > 1)
        config = ShapesConfig(**settings)
    except ValueError as error:
        raise UsageError(f"make-shapes flags: {error}") from error
    started = time.perf_counter()
    out = make_shapes_corpus(
        args.out,
        args.num,
        seed=args.seed,
        config=config,
        workers=args.workers,
        progress=not args.no_progress,
        first_index=args.first_index,
    )
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "corpus": str(out),
                "clips": args.num,
                "splits": split_counts(args.num, config),
                "seconds": round(seconds, 2),
                "clips_per_second": round(args.num / seconds, 1),
            }
        )
    )
    return 0


def add_subcommand(subparsers) -> None:
    command = subparsers.add_parser(
        "make-shapes",
        help="generate the synthetic moving-shapes corpus (H.264 clips, captions, QA, attributes, splits)",
        description="Synthetic moving-shapes clips with known captions and answers. Re-running with the "
        "same arguments into the same folder resumes (finished clips are kept).",
    )
    command.add_argument("out", help="output folder (new or empty, or an unfinished corpus of the same arguments)")
    command.add_argument("--num", type=POSITIVE, required=True, help="number of clips")
    command.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same corpus")
    command.add_argument(
        "--first-index",
        type=NON_NEGATIVE,
        default=0,
        help="index of the first clip in the seed's stream (default 0); corpora of one seed with "
        "disjoint index ranges share no clip and the same held-out pairs (e.g. a pretraining corpus "
        "with --val-fraction 0 --test-fraction 0 --compositional-fraction 0 --first-index 100000)",
    )
    command.add_argument("--frames", type=FRAMES, default=16, help="frames per clip (default 16)")
    command.add_argument("--size", type=FRAME_SIZE, default=64, help="frame side in pixels, even (default 64)")
    command.add_argument("--fps", type=POSITIVE, default=8, help="frames per second of the mp4 (default 8)")
    command.add_argument(
        "--two-object-fraction", type=_fraction, default=0.3, help="clips with two objects (default 0.3)"
    )
    command.add_argument(
        "--heldout-pairs",
        type=NON_NEGATIVE,
        default=6,
        help="colour-shape pairs kept out of train/val/test (default 6)",
    )
    command.add_argument(
        "--compositional-fraction",
        type=_fraction,
        default=0.1,
        help="share of clips in test_compositional (default 0.1)",
    )
    command.add_argument(
        "--val-fraction", type=_fraction, default=0.1, help="share of the other clips in val (default 0.1)"
    )
    command.add_argument(
        "--test-fraction", type=_fraction, default=0.1, help="share of the other clips in test (default 0.1)"
    )
    command.add_argument(
        "--captions", type=int_range(1, 6), default=5, help="caption phrasings per clip (1-6, default 5)"
    )
    command.add_argument("--crf", type=int_range(0, 51), default=18, help="libx264 CRF (default 18)")
    command.add_argument("--preset", default="medium", help="libx264 preset (default medium)")
    command.add_argument("--workers", type=POSITIVE, default=1, help="rendering/encoding processes (default 1)")
    command.add_argument("--no-progress", action="store_true")
    command.set_defaults(func=_cmd_make_shapes)
    _add_make_long_shapes(subparsers)


def _cmd_make_long_shapes(args: argparse.Namespace) -> int:
    from vlm.shapes.long_videos import make_long_videos, read_long_videos

    started = time.perf_counter()
    written = []
    paths = make_long_videos(
        args.corpus,
        args.split,
        args.out,
        count=args.count,
        duration_s=args.duration,
        min_segment_s=args.min_segment,
        max_segment_s=args.max_segment,
        seed=args.seed,
        fps=args.fps,
        unique_colours=args.unique_colours,
        progress=not args.no_progress,
        on_video=written.append,
    )
    truths = read_long_videos(args.out)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "videos": len(paths),
                "written": len(written),
                "skipped": len(paths) - len(written),
                "split": args.split,
                "duration": truths[0].duration,
                "segments": sum(len(truth.segments) for truth in truths),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    )
    return 0


def _add_make_long_shapes(subparsers) -> None:
    command = subparsers.add_parser(
        "make-long-shapes",
        help="long videos made of moving-shapes clips, with ground-truth timelines (long-III.mp4 + long-III.json)",
        description="Long videos whose segments each show one clip of a make-shapes corpus split for 2-12 s "
        "(boundaries off whole seconds), with a ground-truth JSON per video (segment times, clip, caption, "
        "attributes) and an index long_videos.jsonl. Each video has --unique-colours colours shown in exactly "
        "one one-object segment, and at least one colour in two segments. Re-running into the same folder with "
        "the same arguments resumes (finished videos are kept; a larger --count adds videos).",
    )
    command.add_argument("corpus", help="a make-shapes corpus folder")
    command.add_argument(
        "--split",
        default="test",
        help="the split whose clips are used: train, val, test (default) or test_compositional",
    )
    command.add_argument("--out", required=True, help="output folder (new or empty, or one of the same arguments)")
    command.add_argument("--count", type=POSITIVE, default=10, help="number of long videos (default 10)")
    command.add_argument("--duration", type=positive_float, default=120.0, help="seconds per video (default 120)")
    command.add_argument("--min-segment", type=positive_float, default=2.0, help="shortest segment, s (default 2)")
    command.add_argument("--max-segment", type=positive_float, default=12.0, help="longest segment, s (default 12)")
    command.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (default 0)")
    command.add_argument("--fps", type=POSITIVE, default=None, help="frames per second (default: the corpus's)")
    command.add_argument(
        "--unique-colours",
        type=int_range(0, 8),
        default=2,
        help="colours each shown in exactly one one-object segment of a video (default 2)",
    )
    command.add_argument("--no-progress", action="store_true")
    command.set_defaults(func=_cmd_make_long_shapes)
