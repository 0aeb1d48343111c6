"""Score long-video answers on ground-truth timelines (``prism-vlm make-long-shapes`` output) with a glue and a
video-text model (default: the shipped demo models): timeline colour accuracy per second, ``find`` R@1 / R@5
at IoU >= 0.5, "When does the <colour> object appear?" and "What colour is the object at <time>?", each
with its chance level (``vlm.long_video.evaluation``).

    prism-vlm make-shapes CORPUS --num 3000 --seed 0          # the demo models' corpus (its test split is unseen)
    prism-vlm make-long-shapes CORPUS --split test --out LONG --count 10 --duration 120
    python scripts/eval_long_video.py LONG [--window 8] [--json-out bench_out/long_video.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("long_videos", type=Path, help="folder written by prism-vlm make-long-shapes")
    parser.add_argument("--model", default=None, help="glue (default: the demo model)")
    parser.add_argument("--video-text-model", default=None, help="video-text model (default: the demo one)")
    parser.add_argument("--window", type=float, default=8.0, help="window length in seconds (default 8)")
    parser.add_argument("--max-videos", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="window cache (default: a fresh temporary folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import tempfile

    import torch

    from vlm.inference.assistant import load_assistant
    from vlm.long_video.cache import WindowCache
    from vlm.long_video.evaluation import score_long_video, summarise
    from vlm.long_video.moments import find_moments
    from vlm.long_video.questions import LongVideoQA
    from vlm.long_video.reading import read_long_video
    from vlm.long_video.timeline import make_timeline
    from vlm.retrieval.video_text_model import default_video_text_model, load_video_text_model
    from vlm.shapes import read_long_videos

    torch.set_num_threads(args.threads)
    assistant = load_assistant(args.model, device="cpu")
    video_text = load_video_text_model(args.video_text_model or default_video_text_model(), device="cpu")
    truths = read_long_videos(args.long_videos)[: args.max_videos]
    results, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        cache = WindowCache(args.cache_dir or scratch)
        for truth in truths:
            video = read_long_video(
                truth.video, model=assistant.model, video_text_model=video_text, window_s=args.window, cache=cache
            )
            qa = LongVideoQA(assistant, video_text, video)
            results.append(
                score_long_video(
                    truth,
                    timeline=make_timeline(assistant, video),
                    window_s=args.window,
                    find=lambda text, video=video: find_moments(video_text, video, text, top_k=5),
                    ask=lambda question, qa=qa: qa.reply([{"role": "user", "content": question}]).text,
                )
            )
            print(json.dumps(summarise(results[-1:])), file=sys.stderr)
    summary = {"window_s": args.window, "seconds_taken": round(time.perf_counter() - started, 1), **summarise(results)}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"summary": summary, "videos": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
