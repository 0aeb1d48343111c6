"""``prism-vlm make-shapes``: a thin layer over :func:`vlm.shapes.corpus.make_shapes_corpus`
(nothing heavy is imported at module level)."""

from __future__ import annotations

import argparse
import json
import time

from encoder.common.cli_arguments import FRAME_SIZE, FRAMES, NON_NEGATIVE, POSITIVE, int_range
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
