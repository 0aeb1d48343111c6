"""Command-line options several ``prism-vlm`` commands share: transformers' ``generate()`` options."""

from __future__ import annotations

import argparse

from encoder.common.cli_arguments import NON_NEGATIVE, int_range, positive_float


def _positive_at_most(high: float):
    """An argparse ``type``: a number in (0, high] (the ranges GenerationSettings accepts)."""

    def parse(text: str) -> float:
        value = positive_float(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be in (0, {high:g}], got {text}")
        return value

    parse.__name__ = "number"
    return parse


def add_generation_options(command: argparse.ArgumentParser) -> None:
    """--do-sample, --temperature, --top-p, --top-k, --repetition-penalty, --num-beams, --seed
    (transformers' generate() options; greedy by default)."""
    group = command.add_argument_group("generation (greedy by default)")
    group.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    group.add_argument(
        "--temperature", type=_positive_at_most(100), default=1.0, help="sampling temperature, (0, 100] (default 1.0)"
    )
    group.add_argument(
        "--top-p", type=_positive_at_most(1), default=1.0, help="nucleus sampling mass, (0, 1] (default 1.0)"
    )
    group.add_argument(
        "--top-k", type=NON_NEGATIVE, default=50, help="sample among the k most likely (default 50; 0: all)"
    )
    group.add_argument(
        "--repetition-penalty",
        type=_positive_at_most(10),
        default=1.0,
        help="> 1 discourages repeats, at most 10 (default 1.0)",
    )
    group.add_argument(
        "--num-beams", type=int_range(1, 64), default=1, help="beam search with this many beams (default 1)"
    )
    group.add_argument("--seed", type=int, default=None, help="makes sampling repeatable")


def generation_settings(args: argparse.Namespace):
    """The GenerationSettings of add_generation_options' flags (max_new_tokens from --max-new-tokens)."""
    from vlm.inference.generation import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        num_beams=args.num_beams,
        seed=args.seed,
    )
