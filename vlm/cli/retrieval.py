"""``prism-vlm index``, ``search``, ``classify``, ``eval-retrieval`` and ``eval-zeroshot``: thin
layers over :mod:`vlm.retrieval` (nothing heavy is imported at module level)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from encoder.common.cli_arguments import FRAME_SIZE, FRAMES, NON_NEGATIVE, POSITIVE, int_range
from encoder.common.errors import UsageError
from vlm.cli.evaluation import add_output_options, write_outputs

TOP_K = int_range(1, 10_000)


def _load_model(args: argparse.Namespace):
    from encoder.videoprism.loading import default_device
    from vlm.retrieval.video_text_model import default_video_text_model, load_video_text_model

    return load_video_text_model(
        args.video_text_model or default_video_text_model(),
        tokenizer=args.tokenizer,
        device=args.device or default_device(),
        num_frames=args.frames,
        frame_size=args.size,
    )


def _labels(spec: str) -> list[str]:
    """A labels file (one per line) or a comma-separated list."""
    from vlm.retrieval.zero_shot import MAX_LABELS, check_labels, read_lines

    if Path(spec).is_file():
        return check_labels(read_lines(spec, "labels", MAX_LABELS))
    if Path(spec).suffix in (".txt", ".csv", ".tsv") or "/" in spec:
        raise FileNotFoundError(f"labels file not found: {spec}")
    return check_labels([label for label in spec.split(",") if label.strip()])


def _cmd_index(args: argparse.Namespace) -> int:
    from encoder.video.clips import list_videos
    from vlm.retrieval.index import build_index

    videos = list_videos(args.source)  # a bad folder or manifest is reported before the model loads
    model = _load_model(args)
    counts = build_index(
        model,
        videos,
        args.out,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    print(json.dumps({"index": str(args.out), **counts}))
    if counts["errors"]:
        print(f"{counts['errors']} unreadable videos are listed in {args.out}/errors.jsonl", file=sys.stderr)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from encoder.videoprism.loading import default_device
    from vlm.retrieval.index import VideoIndex, VideoIndexError, load_index_model

    if args.video is not None:
        return _search_texts(args)
    if args.index is None or not args.queries:
        raise UsageError("give INDEX and one or more text queries (or --video CLIP --texts FILE for video to text)")
    index = VideoIndex.load(args.index)
    if not len(index):
        raise VideoIndexError(f"the index {args.index} holds no clips")
    model = load_index_model(
        index, device=args.device or default_device(), model=args.video_text_model, tokenizer=args.tokenizer
    )
    scores, rows = index.search(model.embed_texts(args.queries), args.top, args.backend)
    results = [
        {
            "query": query,
            "results": [
                {"rank": rank + 1, "video": index.videos[int(row)], "score": float(score)}
                for rank, (score, row) in enumerate(zip(query_scores, query_rows))
            ],
        }
        for query, query_scores, query_rows in zip(args.queries, scores, rows)
    ]
    _print_ranked(args, results, "video")
    return 0


def _search_texts(args: argparse.Namespace) -> int:
    """Video to text: rank the lines of --texts for one clip."""
    from encoder.video.decode import load_clip
    from vlm.retrieval.zero_shot import read_lines

    if args.texts is None:
        raise UsageError("--video needs --texts FILE (the captions to rank, one per line)")
    if args.index is not None:
        from encoder.videoprism.loading import default_device
        from vlm.retrieval.index import VideoIndex, load_index_model

        model = load_index_model(
            VideoIndex.load(args.index),
            device=args.device or default_device(),
            model=args.video_text_model,
            tokenizer=args.tokenizer,
        )
    else:
        model = _load_model(args)
    texts = read_lines(args.texts, "texts", 1_000_000)
    video = model.embed_clips(load_clip(args.video, num_frames=model.num_frames, size=model.frame_size)[None])[0]
    scores = model.embed_texts(texts) @ video
    order = scores.argsort(descending=True)[: args.top]
    _print_ranked(
        args,
        [
            {
                "video": args.video,
                "results": [
                    {"rank": rank + 1, "text": texts[int(i)], "score": float(scores[i])} for rank, i in enumerate(order)
                ],
            }
        ],
        "text",
    )
    return 0


def _print_ranked(args: argparse.Namespace, results: list[dict], key: str) -> None:
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2, ensure_ascii=False))
        return
    for number, result in enumerate(results):
        if len(results) > 1:
            print(("\n" if number else "") + f"# {result['query']}")
        for item in result["results"]:
            print(f"{item['rank']}\t{item['score']:.4f}\t{item[key]}")


def _cmd_classify(args: argparse.Namespace) -> int:
    import torch

    from encoder.video.clips import Clip, list_videos
    from vlm.retrieval.evaluation import embed_clip_list
    from vlm.retrieval.zero_shot import classify_embeddings, label_embeddings, resolve_templates

    labels = _labels(args.labels)
    templates = resolve_templates(args.templates)
    source = Path(args.video)
    if not source.exists():
        raise FileNotFoundError(f"no such video or folder: {source}")
    videos = list_videos(source) if source.is_dir() else [str(source)]
    model = _load_model(args)
    embeddings, errors = embed_clip_list(
        model,
        [Clip(video, video) for video in videos],
        args.batch_size,
        args.workers,
        progress=len(videos) > args.batch_size,
    )
    classified = [video for video in videos if video in embeddings]
    probabilities = (
        classify_embeddings(
            model, torch.stack([embeddings[v] for v in classified]), label_embeddings(model, labels, templates)
        )
        if classified
        else []
    )
    top = min(args.top, len(labels))
    ranked = {
        video: [{"label": labels[int(i)], "probability": float(row[i])} for i in row.argsort(descending=True)[:top]]
        for video, row in zip(classified, probabilities)
    }
    results = [
        {"video": video, "labels": ranked[video]} if video in ranked else {"video": video, "error": errors[video]}
        for video in videos
    ]
    for video, error in errors.items():
        print(f"{video}: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(results if len(videos) > 1 else results[0], indent=2, ensure_ascii=False))
    else:
        for result in results:
            if "labels" not in result:
                continue
            if len(videos) > 1:
                print(f"# {result['video']}")
            for item in result["labels"]:
                print(f"{item['label']}\t{item['probability']:.4f}")
    return 1 if len(errors) == len(videos) else 0


def _cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from vlm.retrieval.evaluation import evaluate_retrieval, read_captioned_clips, retrieval_markdown

    items = read_captioned_clips(args.data)
    model = _load_model(args)
    results = evaluate_retrieval(
        model, items, batch_size=args.batch_size, num_workers=args.workers, progress=not args.no_progress
    )
    results = {"data": args.data, "model": model.source, **results, "protocol": _protocol(model, args)}
    write_outputs(args, results, retrieval_markdown(results))
    return 0


def _protocol(model, args: argparse.Namespace, **settings) -> dict:
    """The protocol card of an evaluation by the video-text ``model`` on ``args.data``."""
    from vlm.evaluation.protocol import protocol_card

    return protocol_card(video_text_model=model, data={"data": args.data}, settings=settings)


def _cmd_eval_zeroshot(args: argparse.Namespace) -> int:
    from vlm.retrieval.evaluation import evaluate_zero_shot, read_labelled_clips, zero_shot_markdown
    from vlm.retrieval.zero_shot import resolve_templates

    items = read_labelled_clips(args.data)
    labels = _labels(args.labels) if args.labels else None
    templates = resolve_templates(args.templates)
    model = _load_model(args)
    results, records = evaluate_zero_shot(
        model,
        items,
        labels,
        templates,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    if args.predictions:
        from encoder.common.jsonl import write_jsonl_atomically

        write_jsonl_atomically(args.predictions, records)
    protocol = _protocol(model, args, labels=args.labels, templates=args.templates)
    results = {"data": args.data, "model": model.source, **results, "protocol": protocol}
    write_outputs(args, results, zero_shot_markdown(results))
    return 0


def _add_model_options(command: argparse.ArgumentParser, frames: bool = True) -> None:
    command.add_argument(
        "--video-text-model",
        "--model",
        dest="video_text_model",
        default=None,
        metavar="SRC",
        help="video-text model: official LvT .npz, transformers directory or Hub id, or a stage-1 / "
        "LiT output (default: $PRISM_VLM_VIDEO_TEXT_MODEL, else the demo's; --model: the old "
        "spelling, deprecated)",
    )
    command.add_argument(
        "--tokenizer", default=None, help="SentencePiece .model or tokenizer directory (needed for an .npz)"
    )
    command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    if frames:
        command.add_argument("--frames", type=FRAMES, default=None, help="frames per clip (default: the model's)")
        command.add_argument(
            "--size", type=FRAME_SIZE, default=None, help="frame side in pixels (default: the model's)"
        )


def _add_decode_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--batch-size", type=POSITIVE, default=8, help="clips per forward pass (default 8)")
    command.add_argument("--workers", type=NON_NEGATIVE, default=2, help="decoding worker processes (default 2)")


def _add_output_options(command: argparse.ArgumentParser) -> None:
    add_output_options(command)
    command.add_argument("--no-progress", action="store_true")


def add_subcommand(subparsers) -> None:
    """Register index, search, classify, eval-retrieval and eval-zeroshot."""
    index = subparsers.add_parser("index", help="embed every clip of a folder or manifest with a video-text model")
    index.add_argument("source", help="folder of videos, JSONL manifest or text list")
    index.add_argument("--out", required=True, help="index directory (resumed if it exists)")
    _add_model_options(index)
    _add_decode_options(index)
    index.add_argument("--shard-size", type=POSITIVE, default=1024, help="clips per safetensors shard (default 1024)")
    index.add_argument("--no-progress", action="store_true")
    index.set_defaults(func=_cmd_index)

    search = subparsers.add_parser("search", help="search an index by text (or rank captions for a clip)")
    search.add_argument("index", nargs="?", default=None, help="index directory (prism-vlm index)")
    search.add_argument("queries", nargs="*", help="text queries")
    search.add_argument("--top", type=TOP_K, default=5, help="results per query (default 5)")
    search.add_argument(
        "--backend",
        choices=["exact", "faiss"],
        default="exact",
        help="exact (default) or an approximate FAISS HNSW graph (pip install 'prism-vlm[faiss]')",
    )
    search.add_argument("--video", default=None, help="video to text: rank the lines of --texts for this clip")
    search.add_argument("--texts", default=None, help="captions to rank for --video, one per line")
    search.add_argument("--json", action="store_true", help="machine-readable output")
    _add_model_options(search)
    search.set_defaults(func=_cmd_search)

    classify = subparsers.add_parser("classify", help="zero-shot classification of a clip (or a folder) over labels")
    classify.add_argument("video", help="video file or folder")
    classify.add_argument("--labels", required=True, help="labels file (one per line) or comma-separated labels")
    classify.add_argument(
        "--templates",
        default=None,
        help="prompt templates: a file (one per line, '{}' for the label), 'default' "
        "('a video of {}.') or 'clip-kinetics' (CLIP's 28, as in the paper)",
    )
    classify.add_argument("--top", type=TOP_K, default=5, help="labels shown per clip (default 5)")
    classify.add_argument("--json", action="store_true", help="machine-readable output")
    _add_model_options(classify)
    _add_decode_options(classify)
    classify.set_defaults(func=_cmd_classify)

    retrieval = subparsers.add_parser("eval-retrieval", help="zero-shot text<->video retrieval: R@1/5/10, median rank")
    retrieval.add_argument("--data", required=True, help='JSONL of {"video", "caption": text or [texts]}')
    _add_model_options(retrieval)
    _add_decode_options(retrieval)
    _add_output_options(retrieval)
    retrieval.set_defaults(func=_cmd_eval_retrieval)

    zeroshot = subparsers.add_parser(
        "eval-zeroshot", help="zero-shot classification (top-1/5) and multi-choice accuracy"
    )
    zeroshot.add_argument(
        "--data",
        required=True,
        help='JSONL of {"video", "label"} or {"video", "candidates": [texts], "answer": index or text}',
    )
    zeroshot.add_argument(
        "--labels", default=None, help="label set: file or comma-separated (default: the data's labels)"
    )
    zeroshot.add_argument("--templates", default=None, help="prompt templates: file, 'default' or 'clip-kinetics'")
    zeroshot.add_argument("--predictions", default=None, help="write one JSON line per clip")
    _add_model_options(zeroshot)
    _add_decode_options(zeroshot)
    _add_output_options(zeroshot)
    zeroshot.set_defaults(func=_cmd_eval_zeroshot)
