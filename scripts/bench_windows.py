#!/usr/bin/env python
"""Benchmark: reading a long video as consecutive windows, streaming vs one load_clip per window.

Makes a 1-minute and a 10-minute synthetic H.264 mp4 (``--height``p, ``--fps``, a keyframe every
``--gop-seconds``; in a temporary folder unless ``--workdir`` names one to cache them in), then reads
all the ``--window-s`` windows of each, ``--num-frames`` frames at ``--size`` px a window, two ways:

* ``stream``:     ``encoder.video.windows.iter_windows`` (the file opened once, read forward), and
* ``per_window``: ``encoder.video.decode.load_clip(path, T, size, start, end)`` once per window
                  (open, seek and decode for every window).

Each measurement runs in a fresh subprocess (``--repeats`` times; the median is reported): the wall
time of reading every window, and the growth of the process's peak resident memory over its peak
before reading (``VmHWM`` from /proc, which starts afresh at exec, unlike ``getrusage``'s
``ru_maxrss``, which may carry the forking parent's peak; ``ru_maxrss`` where /proc is missing). A
second, untimed subprocess per mode traces the numpy allocations (``tracemalloc`` peak) and a CRC of
every clip, so that the two ways are checked to give the same clips. Prints one JSON object, with the
10-min/1-min ratios of time and peak memory (time should grow about 10x, memory not at all).

Example::

    python scripts/bench_windows.py                       # 1 and 10 min, 144p, 25 fps, 8-s windows
    python scripts/bench_windows.py --minutes 1 3 --repeats 1 --json-out bench_out/windows.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from encoder.common.atomic_files import atomic_output_path  # noqa: E402
from encoder.video.decode import load_clip  # noqa: E402
from encoder.video.windows import _iter_windows_with_stats, video_window_spans  # noqa: E402

MODES = ("stream", "per_window")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs=2, default=[1.0, 10.0], help="the two lengths (default 1 10)")
    parser.add_argument("--height", type=int, default=144, help="frame height; width is 16:9 (default 144)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate (default 25)")
    parser.add_argument("--gop-seconds", type=float, default=2.0, help="keyframe interval in seconds (default 2)")
    parser.add_argument("--window-s", type=float, default=8.0, help="window length in seconds (default 8)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per window (default 16)")
    parser.add_argument("--size", type=int, default=288, help="output side length (default 288)")
    parser.add_argument("--repeats", type=int, default=2, help="timed subprocess runs per video and mode (default 2)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="make and keep the videos here (default: a temp dir)"
    )
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "VIDEO"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_video(path: Path, minutes: float, height: int, fps: int, gop_seconds: float) -> Path:
    """An H.264 mp4 of a square moving over a gradient whose colour changes every second; kept if it exists."""
    if path.exists():
        return path
    width, height = int(round(height * 16 / 9 / 2)) * 2, height // 2 * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient = np.tile(np.linspace(16, 200, width, dtype=np.float32), (height, 1)).astype(np.uint8)
    square = max(height // 6, 8)
    with atomic_output_path(path) as tmp_path, av.open(str(tmp_path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = max(int(round(gop_seconds * fps)), 1)
        stream.options = {"preset": "ultrafast", "crf": "28", "sc_threshold": "0"}
        for i in range(int(round(minutes * 60 * fps))):
            luma = gradient.copy()
            x, y = (i * 7) % (width - square), (i * 3) % (height - square)
            luma[y : y + square, x : x + square] = 235
            second = i // fps
            chroma_u = np.full((height // 2, width // 2), 64 + (second * 37) % 128, np.uint8)
            chroma_v = np.full((height // 2, width // 2), 64 + (second * 71) % 128, np.uint8)
            planes = np.concatenate([luma, chroma_u.reshape(height // 4, width), chroma_v.reshape(height // 4, width)])
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def peak_resident_mib() -> float:
    """This process's peak resident memory (VmHWM, MiB); ``ru_maxrss`` without /proc."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_all(mode: str, path: Path, args: argparse.Namespace, on_clip) -> dict:
    """Read every window of ``path`` one way, calling ``on_clip(clip)`` for each. -> work counts."""
    work = {"windows": 0}
    if mode == "stream":
        work.update(frames_decoded=0, seeks=0)
        for window, stats in _iter_windows_with_stats(path, args.window_s, args.num_frames, args.size):
            on_clip(window.clip)
            work["windows"] += 1
            work["frames_decoded"] += stats.frames_decoded
            work["seeks"] += stats.seeks
            del window  # as the other way: hold no clip while the next one is read
    else:
        for start, end in video_window_spans(path, args.window_s):
            on_clip(load_clip(path, args.num_frames, args.size, start=start, end=end))
            work["windows"] += 1
    return work


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    mode, path = args.child[0], Path(args.child[1])
    if args.trace:
        crcs = []
        tracemalloc.start()
        work = read_all(mode, path, args, lambda clip: crcs.append(zlib.crc32(clip.tobytes())))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(json.dumps({**work, "tracemalloc_peak_mib": peak / 2**20, "crc": zlib.crc32(str(crcs).encode())}))
        return
    before = peak_resident_mib()
    began = time.perf_counter()
    work = read_all(mode, path, args, lambda clip: None)
    wall = time.perf_counter() - began
    peak = peak_resident_mib()
    print(json.dumps({**work, "wall_s": wall, "peak_rss_mib": peak, "peak_rss_growth_mib": peak - before}))


def run_child(mode: str, path: Path, args: argparse.Namespace, trace: bool) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(path)]
    command += ["--window-s", str(args.window_s), "--num-frames", str(args.num_frames), "--size", str(args.size)]
    done = subprocess.run(command + (["--trace"] if trace else []), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(path: Path, args: argparse.Namespace) -> dict:
    result = {
        "file_mib": round(path.stat().st_size / 2**20, 2),
        "windows": len(video_window_spans(path, args.window_s)),
    }
    crcs = {}
    for mode in MODES:
        runs = [run_child(mode, path, args, trace=False) for _ in range(args.repeats)]
        traced = run_child(mode, path, args, trace=True)
        crcs[mode] = traced["crc"]
        entry = {
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
            "wall_s_runs": [round(r["wall_s"], 3) for r in runs],
            "peak_rss_growth_mib": round(statistics.median(r["peak_rss_growth_mib"] for r in runs), 1),
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in runs), 1),
            "tracemalloc_peak_mib": round(traced["tracemalloc_peak_mib"], 2),
        }
        entry.update({k: runs[0][k] for k in ("frames_decoded", "seeks") if k in runs[0]})
        result[mode] = entry
    result["per_window_over_stream_time"] = round(result["per_window"]["wall_s"] / result["stream"]["wall_s"], 2)
    result["same_clips"] = crcs["stream"] == crcs["per_window"]
    return result


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_windows_") as scratch:
        workdir = args.workdir or Path(scratch)
        videos, results = {}, {}
        for minutes in args.minutes:
            name = f"windows_{minutes:g}min_{args.height}p_{args.fps}fps_gop{args.gop_seconds:g}s.mp4"
            began = time.perf_counter()
            videos[minutes] = make_video(workdir / name, minutes, args.height, args.fps, args.gop_seconds)
            made_s = time.perf_counter() - began
            results[f"{minutes:g}min"] = {"made_s": round(made_s, 1), **measure(videos[minutes], args)}
    short, long = (results[f"{m:g}min"] for m in args.minutes)
    ratios = {
        mode: {
            "wall": ratio(long[mode]["wall_s"], short[mode]["wall_s"]),
            "peak_rss_growth": ratio(long[mode]["peak_rss_growth_mib"], short[mode]["peak_rss_growth_mib"]),
            "tracemalloc_peak": ratio(long[mode]["tracemalloc_peak_mib"], short[mode]["tracemalloc_peak_mib"]),
        }
        for mode in MODES
    }
    report = {
        "settings": {
            "minutes": args.minutes,
            "video": f"{args.height}p H.264, {args.fps} fps, keyframe every {args.gop_seconds:g} s",
            "window_s": args.window_s,
            "num_frames": args.num_frames,
            "size": args.size,
            "repeats": args.repeats,
        },
        "videos": results,
        f"ratio_{args.minutes[1]:g}min_over_{args.minutes[0]:g}min": ratios,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "pyav": av.__version__,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return 0 if all(r["same_clips"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
