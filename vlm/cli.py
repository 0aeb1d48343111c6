"""The ``prism-vlm`` command line: each subcommand is a few lines over one library function."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Modules that add their own subcommands: each defines ``add_subcommand(subparsers)`` and imports
# nothing heavy at module level (torch, transformers ... are imported inside the command function).
SUBCOMMAND_MODULES: tuple[str, ...] = (
)


def _cmd_convert(args: argparse.Namespace) -> int:
    from encoder.convert import ConversionOptions, save_converted

    options = ConversionOptions(max_text_length=args.max_text_length)
    out = save_converted(args.checkpoint, args.out_dir, sentencepiece_model=args.tokenizer, options=options)
    print(f"wrote {out}")
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from encoder.features import extract_features, list_videos
    from encoder.loading import load_encoder

    device = args.device or ("cuda" if _cuda_available() else "cpu")
    model = load_encoder(args.model, device=device)
    videos = list_videos(args.videos)
    counts = extract_features(
        model,
        videos,
        args.out,
        num_frames=args.frames,
        size=args.size,
        batch_size=args.batch_size,
        precision=args.precision,
        storage_dtype=args.storage_dtype,
        shard_size=args.shard_size,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    print(json.dumps(counts))
    if counts["errors"]:
        print(f"{counts['errors']} unreadable videos are listed in {args.out}/errors.jsonl", file=sys.stderr)
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from vlm.model import load_model

    model = load_model(args.model, device=args.device or ("cuda" if _cuda_available() else "cpu"))
    captions = model.caption_videos(
        args.videos, num_frames=args.frames, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        progress=len(args.videos) > args.batch_size,
    )
    if args.json:
        print(json.dumps([{"video": v, "caption": c} for v, c in zip(args.videos, captions)], indent=2))
    else:
        for video, caption in zip(args.videos, captions):
            print(f"{video}\t{caption}")
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from vlm.model import load_model
    from vlm.prompts import load_shots
    from vlm.scoring import read_candidates

    candidates = read_candidates(args.candidates, args.candidates_file)
    shots = load_shots(args.shots) if args.shots else ()
    model = load_model(args.model, device=args.device or ("cuda" if _cuda_available() else "cpu"))
    result = model.ask_video(
        args.video, args.question, candidates=candidates, shots=shots,
        num_frames=args.frames, max_new_tokens=args.max_new_tokens,
    )
    if candidates is None:
        print(json.dumps({"video": args.video, "question": args.question, "answer": result}) if args.json else result)
    elif args.json:
        ranked = [scored.to_dict() for scored in result]
        print(json.dumps({"video": args.video, "question": args.question, "answer": result[0].answer, "candidates": ranked}, indent=2))
    else:
        for scored in result:
            print(f"{scored.answer}\t{scored.probability:.4f}\t{scored.log_likelihood:.4f}")
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism-vlm", description="VideoPrism video-language assistant")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser(
        "convert", help="convert an official VideoPrism Flax .npz checkpoint to a transformers directory"
    )
    convert.add_argument("checkpoint", help="official .npz (e.g. flax_base_f16r288_repeated.npz)")
    convert.add_argument("out_dir", help="output directory (config.json + model.safetensors)")
    convert.add_argument(
        "--tokenizer", default=None, help="SentencePiece model of a video-text checkpoint, saved as its tokenizer"
    )
    convert.add_argument("--max-text-length", type=int, default=64, help="text position table length (default 64)")
    convert.set_defaults(func=_cmd_convert)

    features = sub.add_parser("features", help="encode videos with a frozen VideoPrism and cache the tokens")
    features.add_argument("--model", required=True, help="Hub id, transformers directory or official .npz")
    features.add_argument("--videos", required=True, help="folder of videos, JSONL manifest or text list")
    features.add_argument("--out", required=True, help="cache directory (resumed if it exists)")
    features.add_argument("--frames", type=int, default=16)
    features.add_argument("--size", type=int, default=288)
    features.add_argument("--batch-size", type=int, default=8)
    features.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    features.add_argument("--storage-dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    features.add_argument("--shard-size", type=int, default=256, help="clips per safetensors shard")
    features.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    features.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    features.add_argument("--no-progress", action="store_true")
    features.set_defaults(func=_cmd_features)

    caption = sub.add_parser("caption", help="caption videos with a prism-vlm glue model")
    caption.add_argument("videos", nargs="+", help="video files")
    _add_vlm_options(caption)
    caption.add_argument("--batch-size", type=int, default=8, help="videos captioned together (default 8)")
    caption.set_defaults(func=_cmd_caption)

    ask = sub.add_parser("ask", help="answer a question about a video (open, or ranked over candidates)")
    ask.add_argument("video", help="video file")
    ask.add_argument("question")
    candidates = ask.add_mutually_exclusive_group()
    candidates.add_argument("--candidates", default=None, help="comma-separated candidate answers (closed vocabulary)")
    candidates.add_argument("--candidates-file", default=None, help="candidate answers, one per line")
    ask.add_argument("--shots", default=None, help="few-shot examples: JSON list or JSONL of {question, answer}")
    _add_vlm_options(ask)
    ask.set_defaults(func=_cmd_ask)

    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(sub)
    return parser


def _add_vlm_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default=None, help="saved glue model directory (default: the installed demo model)")
    command.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the model's)")
    command.add_argument("--max-new-tokens", type=int, default=32)
    command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    command.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"prism-vlm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
