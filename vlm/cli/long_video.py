"""``prism-vlm timeline`` and ``prism-vlm find``: thin layers over :mod:`vlm.long_video` (nothing heavy is
imported at module level)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from encoder.common.cli_arguments import NEW_TOKENS, POSITIVE, int_range
from encoder.common.errors import UsageError
from vlm.cli.options import generation_settings

MAX_WINDOW_S = 600.0


def window_seconds(text: str) -> float:
    """An argparse ``type``: a window length in seconds, in [0.5, 600]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.5 <= value <= MAX_WINDOW_S:
        raise argparse.ArgumentTypeError(f"must be from 0.5 to {MAX_WINDOW_S:g} seconds, got {text}")
    return value


def add_window_options(command: argparse.ArgumentParser, device: bool = True) -> None:
    """The flags every long-video command shares: the window length and the window cache."""
    from vlm.long_video import DEFAULT_WINDOW_S

    command.add_argument(
        "--window",
        type=window_seconds,
        default=DEFAULT_WINDOW_S,
        metavar="SECONDS",
        help=f"window length in seconds (default {DEFAULT_WINDOW_S:g}); each window is read at the model's frames",
    )
    command.add_argument("--cache-dir", default=None, help="window cache folder (default: ~/.cache/prism-vlm/windows)")
    command.add_argument(
        "--cache-max-gb", type=float, default=2.0, help="window cache size limit in GiB (default 2; 0: no cache)"
    )
    command.add_argument("--batch-size", type=POSITIVE, default=8, help="windows per forward pass (default 8)")
    if device:
        command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    command.add_argument("--no-progress", action="store_true")


def window_cache(args: argparse.Namespace):
    from vlm.long_video.cache import WindowCache

    if not 0 <= args.cache_max_gb <= 1e6:
        raise UsageError(f"--cache-max-gb must be from 0 to 1000000, got {args.cache_max_gb}")
    return WindowCache(args.cache_dir, max_bytes=int(args.cache_max_gb * 1024**3))


def load_video_text(args: argparse.Namespace, device: str):
    from vlm.retrieval.video_text_model import default_video_text_model, load_video_text_model

    return load_video_text_model(
        args.video_text_model or default_video_text_model(), tokenizer=args.tokenizer, device=device
    )


def add_long_video_options(command: argparse.ArgumentParser) -> None:
    """--window, the window cache and the video-text model: how a video longer than one window is read."""
    add_window_options(command, device=False)
    command.add_argument(
        "--video-text-model",
        default=None,
        metavar="SRC",
        help="video-text model that finds the moments a question names in a long video (default: the demo's)",
    )
    command.add_argument("--tokenizer", default=None, help="its SentencePiece .model (needed for an .npz)")


def open_long_video_qa(args: argparse.Namespace, assistant, device: str):
    """A :class:`vlm.long_video.questions.LongVideoQA` for ``args.video`` when it is longer than one window
    (``args.window``), else None (a clip: asked as today)."""
    from encoder.video.windows import video_window_spans
    from vlm.long_video.questions import LongVideoQA
    from vlm.long_video.reading import read_long_video

    if len(video_window_spans(args.video, args.window)) < 2:
        return None
    video_text = load_video_text(args, device)
    video = read_long_video(
        args.video,
        model=assistant.model,
        video_text_model=video_text,
        window_s=args.window,
        cache=window_cache(args),
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return LongVideoQA(
        assistant,
        video_text,
        video,
        max_new_tokens=args.max_new_tokens,
        generation=generation_settings(args),
        batch_size=args.batch_size,
    )


def _timeline_one(assistant, path: Path, args: argparse.Namespace, cache):
    from vlm.long_video.reading import read_long_video
    from vlm.long_video.timeline import make_timeline

    video = read_long_video(
        path,
        model=assistant.model,
        window_s=args.window,
        cache=cache,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return make_timeline(assistant, video, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)


def _cmd_timeline(args: argparse.Namespace) -> int:
    from encoder.videoprism.loading import default_device
    from vlm.inference.assistant import load_assistant
    from vlm.long_video.timeline import format_timeline

    fmt = "json" if args.json else "srt" if args.srt else "vtt" if args.vtt else "text"
    source = Path(args.video)
    if source.is_file() and source.suffix.lower() not in (".jsonl", ".txt") and args.out is None:
        cache = window_cache(args)
        assistant = load_assistant(args.model, device=args.device or default_device())
        sys.stdout.write(format_timeline(_timeline_one(assistant, source, args, cache), fmt))
        return 0
    if args.out is None:
        raise UsageError("a folder or manifest of videos writes one timeline per video: give --out DIR")
    return _timelines_to_folder(args, fmt)


def _timelines_to_folder(args: argparse.Namespace, fmt: str) -> int:
    """One timeline file per video of a folder or manifest into --out; videos already done are skipped; under
    ``accelerate launch`` each process takes its share."""
    from accelerate import PartialState

    from encoder.common.atomic_files import write_text_atomically
    from encoder.common.jsonl import append_jsonl
    from encoder.video.clips import list_videos
    from encoder.video.decode import VideoDecodeError
    from encoder.videoprism.loading import default_device
    from vlm.inference.assistant import load_assistant
    from vlm.long_video.timeline import format_timeline

    videos = list_videos(args.video)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; timelines of several videos go into a folder")
    suffix = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}[fmt]
    state = PartialState(cpu=(args.device or "").startswith("cpu") or default_device() == "cpu")
    mine = [video for i, video in enumerate(videos) if i % state.num_processes == state.process_index]
    names = {video: f"{i:05d}-{Path(video).stem}{suffix}" for i, video in enumerate(videos)}
    todo = [video for video in mine if not (out / names[video]).is_file()]
    counts = {"written": 0, "skipped": len(mine) - len(todo), "errors": 0}
    if todo:
        assistant = load_assistant(args.model, device=args.device or state.device)
        cache = window_cache(args)
        for video in todo:
            try:
                segments = _timeline_one(assistant, Path(video), args, cache)
            except (VideoDecodeError, FileNotFoundError) as error:
                append_jsonl(out / f"errors-{state.process_index}.jsonl", [{"video": str(video), "error": str(error)}])
                counts["errors"] += 1
                continue
            write_text_atomically(out / names[video], format_timeline(segments, fmt))
            counts["written"] += 1
    print(json.dumps({"out": str(out), **counts}))
    return 0


def _cmd_find(args: argparse.Namespace) -> int:
    from encoder.videoprism.loading import default_device
    from vlm.long_video.moments import find_moments
    from vlm.long_video.reading import read_long_video
    from vlm.long_video.timeline import clock

    if not args.text.strip():
        raise UsageError("the text to find is empty")
    device = args.device or default_device()
    model = load_video_text(args, device)
    video = read_long_video(
        args.video,
        video_text_model=model,
        window_s=args.window,
        cache=window_cache(args),
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    moments = find_moments(model, video, args.text, top_k=args.top)
    if args.json:
        print(json.dumps([moment.to_dict() for moment in moments], indent=2))
    else:
        for moment in moments:
            print(f"{clock(moment.start)}-{clock(moment.end)}\t{moment.score:.4f}")
    return 0


def add_subcommand(subparsers) -> None:
    timeline = subparsers.add_parser(
        "timeline", help="caption a long video window by window: its timeline with times (text, JSON, SRT, WebVTT)"
    )
    timeline.add_argument("video", help="video file, or a folder or manifest of videos (with --out)")
    formats = timeline.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help='a list of {"start", "end", "caption"}')
    formats.add_argument("--srt", action="store_true", help="SRT subtitles")
    formats.add_argument("--vtt", action="store_true", help="WebVTT subtitles")
    timeline.add_argument("--out", default=None, help="folder for the timelines of a folder or manifest (resumable)")
    timeline.add_argument(
        "--model", default=None, help="saved glue model directory (default: the installed demo model)"
    )
    timeline.add_argument("--max-new-tokens", type=NEW_TOKENS, default=32, help="tokens per caption (default 32)")
    add_window_options(timeline)
    timeline.set_defaults(func=_cmd_timeline)

    find = subparsers.add_parser("find", help="the moments of a long video that a text describes, best first")
    find.add_argument("video", help="video file")
    find.add_argument("text", help='what to find, e.g. "a red star moving left"')
    find.add_argument("--top", type=int_range(1, 1000), default=5, help="spans to show (default 5)")
    find.add_argument("--json", action="store_true", help='a list of {"start", "end", "score"}')
    find.add_argument(
        "--video-text-model",
        default=None,
        metavar="SRC",
        help="video-text model (default: $PRISM_VLM_VIDEO_TEXT_MODEL, else the demo's)",
    )
    find.add_argument("--tokenizer", default=None, help="SentencePiece .model or tokenizer directory (for an .npz)")
    add_window_options(find)
    find.set_defaults(func=_cmd_find)
