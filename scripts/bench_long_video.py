"""Long videos, measured side by side in one run with the shipped demo models (each measurement in a fresh
subprocess, so peak memory is that measurement's own):

1. the timeline of a 10-minute vs a 1-minute video (wall time and peak RSS of the whole process), twice: a
   10-minute video of other clips (its captions differ in length), and the 1-minute video played ten times
   over (the same windows ten times: how the cost scales with length alone);
2. a second question about the same long video vs the first (the window cache: nothing is encoded again);
3. windows encoded in batches (``--batch-size``, default 8) vs one at a time.

The videos are long moving-shapes videos (``make_long_videos``) from a small corpus made here.

    python scripts/bench_long_video.py [--json-out bench_out/long_video_bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--measure", nargs=4, default=None, help=argparse.SUPPRESS)  # kind video cache batch
    return parser.parse_args(argv)


class _RssSampler:
    """Samples this process's resident set size (``/proc/self/statm``) every 5 ms in a thread, from its
    creation to :meth:`stop`: (RSS at the start, peak RSS) in MiB. ``ru_maxrss`` would report the model
    loading's peak, not the measured work's."""

    def __init__(self):
        import os
        import threading

        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self.start_mb = self.peak_mb = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page_mb

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self._rss())

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.start_mb, max(self.peak_mb, self._rss())


def measure(kind: str, video: str, cache_dir: str, batch_size: int, threads: int) -> dict:
    """One measurement in this process: ``timeline`` (read + caption every window), ``question`` (read
    + one "When ..." question) or ``read`` (read the windows only). Wall time and peak RSS."""
    import time

    import torch

    torch.set_num_threads(threads)
    from vlm.inference.assistant import load_assistant
    from vlm.long_video.cache import WindowCache
    from vlm.long_video.questions import LongVideoQA
    from vlm.long_video.reading import read_long_video
    from vlm.long_video.timeline import make_timeline
    from vlm.retrieval.video_text_model import default_video_text_model, load_video_text_model

    assistant = load_assistant(device="cpu")
    video_text = load_video_text_model(default_video_text_model(), device="cpu")
    sampler = _RssSampler()  # the process's resident memory while the measured work runs (models loaded)
    cache = WindowCache(cache_dir)
    started = time.perf_counter()
    if kind == "timeline":
        long_video = read_long_video(video, model=assistant.model, window_s=8.0, cache=cache, batch_size=batch_size)
        read_s = time.perf_counter() - started
        segments = make_timeline(assistant, long_video, batch_size=batch_size)
        tokens = [len(assistant.tokenizer(s.caption)["input_ids"]) for s in segments]
        result = {
            "segments": len(segments),
            "read_seconds": round(read_s, 3),
            "caption_seconds": round(time.perf_counter() - started - read_s, 3),
            "caption_tokens_mean": round(sum(tokens) / len(tokens), 1),
            "caption_tokens_max": max(tokens),
        }
    elif kind == "question":
        long_video = read_long_video(
            video, model=assistant.model, video_text_model=video_text, window_s=8.0, cache=cache, batch_size=batch_size
        )
        reply = LongVideoQA(assistant, video_text, long_video).reply(
            [{"role": "user", "content": "When does the red object appear?"}]
        )
        result = {"reply": reply.text}
    else:
        long_video = read_long_video(
            video, model=assistant.model, video_text_model=video_text, window_s=8.0, cache=cache, batch_size=batch_size
        )
        result = {}
    seconds = time.perf_counter() - started
    before, peak = sampler.stop()
    return {
        "kind": kind,
        "windows": long_video.num_windows,
        "seconds": round(seconds, 3),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_growth_mb": round(peak - before, 1),
        **result,
    }


def run(kind: str, video: Path, cache_dir: Path, batch_size: int, threads: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--threads",
            str(threads),
            "--measure",
            kind,
            str(video),
            str(cache_dir),
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _repeat_video(source: Path, out: Path, times: int) -> Path:
    """``source`` played ``times`` times over, re-encoded as the shapes corpus encodes (frames streamed)."""
    import av

    from vlm.shapes.long_videos import write_mp4_stream

    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps, size = int(stream.average_rate), stream.codec_context.width

    def frames():
        for _ in range(times):
            with av.open(str(source)) as container:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")

    write_mp4_stream(frames(), out, fps, size)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure:
        kind, video, cache_dir, batch = args.measure
        print(json.dumps(measure(kind, video, cache_dir, int(batch), args.threads)))
        return 0
    from vlm.shapes import ShapesConfig, make_long_videos, make_shapes_corpus

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        corpus = make_shapes_corpus(
            root / "corpus", 120, seed=11, config=ShapesConfig(test_fraction=0.5), progress=False
        )
        short = make_long_videos(corpus, "test", root / "one_minute", count=1, duration_s=60.0, seed=1)[0]
        long = make_long_videos(corpus, "test", root / "ten_minutes", count=1, duration_s=600.0, seed=1)[0]
        repeated = _repeat_video(short, root / "one_minute_ten_times.mp4", 10)
        results = {
            "timeline_1min": run("timeline", short, root / "cache-a", args.batch_size, args.threads),
            "timeline_10min": run("timeline", long, root / "cache-b", args.batch_size, args.threads),
            "timeline_1min_x10": run("timeline", repeated, root / "cache-f", args.batch_size, args.threads),
            "first_question": run("question", long, root / "cache-c", args.batch_size, args.threads),
            "second_question": run("question", long, root / "cache-c", args.batch_size, args.threads),
            "read_batched": run("read", long, root / "cache-d", args.batch_size, args.threads),
            "read_one_at_a_time": run("read", long, root / "cache-e", 1, args.threads),
        }
    t1, t10, t10r = results["timeline_1min"], results["timeline_10min"], results["timeline_1min_x10"]
    summary = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads,
        "timeline_time_ratio_10min_vs_1min": round(t10["seconds"] / t1["seconds"], 2),
        "timeline_peak_rss_ratio_10min_vs_1min": round(t10["peak_rss_mb"] / t1["peak_rss_mb"], 3),
        "timeline_rss_growth_mb_1min_10min": [t1["rss_growth_mb"], t10["rss_growth_mb"]],
        "timeline_time_ratio_1min_x10_vs_1min": round(t10r["seconds"] / t1["seconds"], 2),
        "timeline_peak_rss_ratio_1min_x10_vs_1min": round(t10r["peak_rss_mb"] / t1["peak_rss_mb"], 3),
        "second_vs_first_question_speedup": round(
            results["first_question"]["seconds"] / results["second_question"]["seconds"], 1
        ),
        "batched_vs_one_at_a_time_speedup": round(
            results["read_one_at_a_time"]["seconds"] / results["read_batched"]["seconds"], 2
        ),
        "results": results,
    }
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
