"""The ``prism-vlm`` command line: each subcommand is a few lines over one library function."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from encoder.common.cli_arguments import (
    FRAME_SIZE,
    FRAMES,
    NEW_TOKENS,
    NON_NEGATIVE,
    POSITIVE,
)
from encoder.common.errors import PrismVlmError, UsageError
from vlm.cli.options import add_generation_options, generation_settings  # noqa: F401  (used by the commands here)

# Shown as one line: every error the package raises for what the user gave (PrismVlmError), and the
# operating system's answer about a path the user named. A plain ValueError, RuntimeError ... is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    PrismVlmError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

# Modules that add their own subcommands: each defines ``add_subcommand(subparsers)`` and imports
# nothing heavy at module level (torch, transformers ... are imported inside the command function).
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "vlm.cli.evaluation",
    "vlm.cli.chat",
    "vlm.cli.shapes",
    "apps.cli",
    "vlm.cli.train",
    "vlm.cli.pretrain",
    "vlm.cli.retrieval",
    "vlm.cli.long_video",
)


def _cmd_convert(args: argparse.Namespace) -> int:
    from encoder.videoprism.convert import ConversionOptions, save_converted

    options = ConversionOptions(max_text_length=args.max_text_length)
    out = save_converted(args.checkpoint, args.out_dir, sentencepiece_model=args.tokenizer, options=options)
    print(f"wrote {out}")
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from encoder.video.clips import list_videos
    from encoder.videoprism.features import extract_features
    from encoder.videoprism.loading import default_device, load_encoder

    videos = list_videos(args.videos)  # a bad manifest is reported before the encoder loads
    device = args.device or default_device()
    model = load_encoder(args.encoder, device=device)
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
        crops=args.crops,
        crop_seed=args.crop_seed,
    )
    print(json.dumps(counts))
    if counts["errors"]:
        print(f"{counts['errors']} unreadable videos are listed in {args.out}/errors.jsonl", file=sys.stderr)
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from encoder.videoprism.loading import default_device

    if args.out is not None or args.video_source is not None or args.features is not None:
        return _cmd_caption_to_file(args)
    if not args.videos:
        raise UsageError("give video files, or --videos DIR|MANIFEST|DATASET (or --features CACHE) with --out FILE")
    from vlm.inference.assistant import load_assistant

    assistant = load_assistant(args.model, device=args.device or default_device())
    captions = assistant.caption_videos(
        args.videos,
        num_frames=args.frames,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        generation=generation_settings(args),
        progress=len(args.videos) > args.batch_size,
    )
    if args.json:
        print(json.dumps([{"video": v, "caption": c} for v, c in zip(args.videos, captions)], indent=2))
    else:
        for video, caption in zip(args.videos, captions):
            print(f"{video}\t{caption}")
    return 0


def _cmd_caption_to_file(args: argparse.Namespace) -> int:
    """Resumable, sharded captioning of a folder / manifest / dataset / feature cache into --out."""
    from accelerate import PartialState

    from encoder.video.clips import clips_from_feature_cache, list_clips
    from encoder.videoprism.features import FeatureCache
    from encoder.videoprism.loading import default_device
    from vlm.inference.assistant import load_assistant
    from vlm.inference.batch_caption import caption_clips, errors_path_for

    if args.out is None:
        raise UsageError("--videos and --features write JSONL: give --out FILE")
    if args.videos and args.video_source is not None:
        raise UsageError("give video files or --videos, not both")
    features = FeatureCache(args.features) if args.features is not None else None
    if args.video_source is not None:
        clips = list_clips(
            args.video_source, video_column=args.video_column, id_column=args.id_column, split=args.split
        )
    elif args.videos:
        clips = list_clips(args.videos)
    elif features is not None:
        clips = clips_from_feature_cache(features)
    else:
        raise UsageError("nothing to caption: give --videos or --features")
    # Under `accelerate launch` (or torchrun) each process takes a shard; without CUDA they use gloo.
    state = PartialState(cpu=(args.device or "").startswith("cpu") or default_device() == "cpu")
    assistant = load_assistant(args.model, device=args.device or state.device, load_video_encoder=features is None)
    errors_path = args.errors or errors_path_for(args.out)
    counts = caption_clips(
        assistant,
        clips,
        args.out,
        errors_path=errors_path,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        generation=generation_settings(args),
        num_frames=args.frames,
        features=features,
        num_workers=args.workers,
        progress=not args.no_progress,
        state=state,
    )
    if state.is_main_process:
        print(json.dumps({"output": str(args.out), **counts}))
        if counts["errors"]:
            print(f"{counts['errors']} unreadable clips are listed in {errors_path}", file=sys.stderr)
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from encoder.videoprism.loading import default_device
    from vlm.cli.long_video import open_long_video_qa
    from vlm.inference.assistant import load_assistant
    from vlm.inference.scoring import read_candidates
    from vlm.prompts import load_shots

    candidates = read_candidates(args.candidates, args.candidates_file)
    shots = load_shots(args.shots) if args.shots else ()
    device = args.device or default_device()
    assistant = load_assistant(args.model, device=device)
    long_video = open_long_video_qa(args, assistant, device)
    if long_video is not None:
        return _ask_long_video(args, long_video, candidates)
    result = assistant.ask_video(
        args.video,
        args.question,
        candidates=candidates,
        shots=shots,
        num_frames=args.frames,
        max_new_tokens=args.max_new_tokens,
        generation=generation_settings(args),
    )
    if candidates is None:
        print(json.dumps({"video": args.video, "question": args.question, "answer": result}) if args.json else result)
    elif args.json:
        ranked = [scored.to_dict() for scored in result]
        print(
            json.dumps(
                {"video": args.video, "question": args.question, "answer": result[0].answer, "candidates": ranked},
                indent=2,
            )
        )
    else:
        for scored in result:
            print(f"{scored.answer}\t{scored.probability:.4f}\t{scored.log_likelihood:.4f}")
    return 0


def _ask_long_video(args: argparse.Namespace, long_video, candidates) -> int:
    """``ask`` about a video longer than one window: answered (or the candidates ranked) from the windows
    the question concerns, with their times."""
    if candidates is None:
        reply = long_video.reply([{"role": "user", "content": args.question}])
        spans = [{"start": round(a, 3), "end": round(b, 3)} for a, b in reply.spans]
        output = {"video": args.video, "question": args.question, "answer": reply.text, "spans": spans}
        print(json.dumps(output) if args.json else reply.text)
        return 0
    (start, end), ranked = long_video.rank(args.question, candidates)
    if args.json:
        print(
            json.dumps(
                {
                    "video": args.video,
                    "question": args.question,
                    "answer": ranked[0].answer,
                    "span": {"start": round(start, 3), "end": round(end, 3)},
                    "candidates": [scored.to_dict() for scored in ranked],
                },
                indent=2,
            )
        )
    else:
        from vlm.long_video.timeline import clock

        print(f"# from {clock(start)}-{clock(end)}")
        for scored in ranked:
            print(f"{scored.answer}\t{scored.probability:.4f}\t{scored.log_likelihood:.4f}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from encoder.training.run_log import plot_metrics

    run = Path(args.run)
    metrics = run / "metrics.jsonl" if run.is_dir() else run
    if not metrics.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run}")
    out = plot_metrics(metrics, args.out or metrics.with_name("loss.png"), keys=args.keys, title=args.title)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vlm.cli.long_video import add_long_video_options

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
    features.add_argument(
        "--encoder",
        "--model",
        dest="encoder",
        required=True,
        metavar="SRC",
        help="VideoPrism encoder: Hub id, transformers directory or official .npz "
        "(--model: the old spelling, deprecated)",
    )
    features.add_argument("--videos", required=True, help="folder of videos, JSONL manifest or text list")
    features.add_argument("--out", required=True, help="cache directory (resumed if it exists)")
    features.add_argument("--frames", type=FRAMES, default=16)
    features.add_argument("--size", type=FRAME_SIZE, default=288)
    features.add_argument("--batch-size", type=POSITIVE, default=8)
    features.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    features.add_argument("--storage-dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    features.add_argument("--shard-size", type=POSITIVE, default=256, help="clips per safetensors shard")
    features.add_argument("--workers", type=NON_NEGATIVE, default=2, help="decoding worker processes")
    features.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    features.add_argument(
        "--crops",
        type=NON_NEGATIVE,
        default=0,
        help="also store K seeded random training crops per clip (346/288 centre crop, then random crop)",
    )
    features.add_argument("--crop-seed", type=int, default=0, help="seed of the stored random crops")
    features.add_argument("--no-progress", action="store_true")
    features.set_defaults(func=_cmd_features)

    caption = sub.add_parser(
        "caption",
        help="caption videos with a prism-vlm glue model (files to stdout, or a folder/dataset to resumable JSONL)",
    )
    caption.add_argument("videos", nargs="*", help="video files (captions printed unless --out is given)")
    caption.add_argument(
        "--videos",
        dest="video_source",
        default=None,
        help="folder, JSONL manifest, text list, saved Hugging Face dataset directory or hf:NAME",
    )
    caption.add_argument("--out", default=None, help="JSONL output, one line per clip, resumed if it exists")
    caption.add_argument("--errors", default=None, help="unreadable clips (default: OUT with .errors.jsonl)")
    caption.add_argument("--features", default=None, help="feature cache directory: caption cached tokens, no decoding")
    caption.add_argument("--video-column", default="video", help="dataset column holding the videos (default video)")
    caption.add_argument("--id-column", default=None, help="dataset column holding clip ids (default video_id or id)")
    caption.add_argument("--split", default=None, help="dataset split (default: the only one; test for hf:NAME)")
    caption.add_argument("--workers", type=NON_NEGATIVE, default=2, help="decoding worker processes (default 2)")
    caption.add_argument("--no-progress", action="store_true")
    _add_vlm_options(caption)
    caption.add_argument("--batch-size", type=POSITIVE, default=8, help="videos captioned together (default 8)")
    caption.set_defaults(func=_cmd_caption)

    ask = sub.add_parser("ask", help="answer a question about a video (open, or ranked over candidates)")
    ask.add_argument("video", help="video file")
    ask.add_argument("question")
    candidates = ask.add_mutually_exclusive_group()
    candidates.add_argument("--candidates", default=None, help="comma-separated candidate answers (closed vocabulary)")
    candidates.add_argument("--candidates-file", default=None, help="candidate answers, one per line")
    ask.add_argument("--shots", default=None, help="few-shot examples: JSON list or JSONL of {question, answer}")
    _add_vlm_options(ask)
    add_long_video_options(ask)
    ask.set_defaults(func=_cmd_ask)

    plot = sub.add_parser("plot", help="plot a training run's metrics.jsonl (glue training or pretraining) to a PNG")
    plot.add_argument("run", help="run directory (or its metrics.jsonl)")
    plot.add_argument("--keys", nargs="+", default=["loss", "val_loss"], help="metrics to plot (default loss val_loss)")
    plot.add_argument("--out", default=None, help="PNG to write (default: RUN/loss.png)")
    plot.add_argument("--title", default=None)
    plot.set_defaults(func=_cmd_plot)

    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommand(sub)
    return parser


def _add_vlm_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default=None, help="saved glue model directory (default: the installed demo model)")
    command.add_argument("--frames", type=FRAMES, default=None, help="frames sampled per video (default: the model's)")
    command.add_argument("--max-new-tokens", type=NEW_TOKENS, default=32)
    add_generation_options(command)
    command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    command.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (:data:`USER_ERRORS`: a bad flag, file, manifest or model
    directory) is one line on stderr and exit code 2, Ctrl-C exit code 130; anything else is a bug
    and propagates with its traceback. Bad flags exit 2 with argparse's usage line. File names that
    are not UTF-8 are printed with their original bytes (``surrogateescape``), as ``ls`` prints them."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"prism-vlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        print(f"prism-vlm {args.command}: error: {str(error) or type(error).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
