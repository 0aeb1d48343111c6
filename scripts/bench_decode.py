#!/usr/bin/env python
"""Benchmark (b): time to get 16 frames from a long H.264 file, seek-based vs decode-everything.

The benchmark makes its own test file (cached in ``--workdir``): ``--minutes`` of
``--height``p H.264 (libx264, preset ultrafast) at ``--fps`` with a keyframe every
``--gop-seconds`` seconds and simple moving content. It then times

* ``seek``:     ``encoder.video.decode.decode_frames(path, N)`` (seek to the keyframe before
                each sampled time, decode forward to it, convert only that frame), and
* ``baseline``: decode every frame of the file in order and convert only the N frames
                displayed at the same sampled times to RGB,

reports the median over ``--repeats`` runs of each, their ratio (target: >= 10x), and
checks that both return the same frames (mean absolute difference in 0-255 units).

Example::

    python scripts/bench_decode.py                          # 10 min, 720p, 16 frames
    python scripts/bench_decode.py --minutes 1 --json-out bench_out/decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from encoder.common.atomic_files import atomic_output_path  # noqa: E402
from encoder.video.decode import decode_frames, sample_times, stream_duration, stream_start  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the test file (default 10)")
    parser.add_argument("--height", type=int, default=720, help="frame height; width is 16:9 (default 720)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate of the test file (default 25)")
    parser.add_argument("--gop-seconds", type=float, default=2.0, help="keyframe interval in seconds (default 2)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames to sample (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the seek path (default 5)")
    parser.add_argument(
        "--baseline-repeats", type=int, default=1, help="timed runs of the decode-everything baseline (default 1)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "prism_vlm_bench",
        help="where the test file is made and cached (default: $TMPDIR/prism_vlm_bench)",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def make_test_video(path: Path, minutes: float, height: int, fps: int, gop_seconds: float) -> Path:
    """Write an H.264 mp4 of a bright square moving over a gradient; skipped if ``path`` exists."""
    if path.exists():
        return path
    width = int(round(height * 16 / 9 / 2)) * 2
    height = height // 2 * 2
    num_frames = int(round(minutes * 60 * fps))
    path.parent.mkdir(parents=True, exist_ok=True)

    gradient = np.tile(np.linspace(16, 200, width, dtype=np.float32), (height, 1)).astype(np.uint8)
    chroma = np.full((height // 2, width), 128, dtype=np.uint8)
    square = max(height // 6, 8)

    with atomic_output_path(path) as tmp_path, av.open(str(tmp_path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = max(int(round(gop_seconds * fps)), 1)
        stream.options = {"preset": "ultrafast", "crf": "28", "sc_threshold": "0"}
        for i in range(num_frames):
            luma = gradient.copy()
            x = (i * 7) % (width - square)
            y = (i * 3) % (height - square)
            luma[y : y + square, x : x + square] = 235
            # A frame-number bar so that every frame differs from its neighbours.
            luma[:8, : (i % width)] = 0
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decode_all_baseline(path: Path, num_frames: int) -> list[np.ndarray]:
    """Decode every frame in order; convert to RGB only those displayed at the sampled times.

    Returns ``num_frames`` uint8 arrays [H, W, 3]. Same sampling rule as ``decode_frames``:
    the frame displayed at time t is the last frame with pts time <= t.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start, duration = stream_start(container, stream), stream_duration(container, stream)
        targets = sample_times(start, start + duration, num_frames)
        picked = []  # frame displayed at each target, in target order
        shown = None
        for frame in container.decode(stream):
            while len(picked) < num_frames and frame.time > targets[len(picked)] + 1e-6:
                picked.append(shown if shown is not None else frame)
            shown = frame
        picked += [shown] * (num_frames - len(picked))
        return [f.to_ndarray(format="rgb24") for f in picked]


def time_call(fn, repeats: int) -> tuple[list[float], object]:
    times_ms = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times_ms.append((time.perf_counter() - t0) * 1000.0)
    return times_ms, result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"bench_{args.minutes:g}min_{args.height}p_{args.fps}fps_gop{args.gop_seconds:g}s.mp4"
    path = args.workdir / name
    t0 = time.perf_counter()
    existed = path.exists()
    make_test_video(path, args.minutes, args.height, args.fps, args.gop_seconds)
    make_s = time.perf_counter() - t0

    decode_frames(path, args.num_frames)  # warm-up (page cache, library init)
    seek_ms, seek_frames = time_call(lambda: decode_frames(path, args.num_frames), args.repeats)
    base_ms, base_frames = time_call(lambda: decode_all_baseline(path, args.num_frames), args.baseline_repeats)

    diffs = [float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) for a, b in zip(seek_frames, base_frames)]
    seek_med = statistics.median(seek_ms)
    base_med = statistics.median(base_ms)
    result = {
        "file": str(path),
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "file_made_s": None if existed else round(make_s, 1),
        "minutes": args.minutes,
        "height": args.height,
        "fps": args.fps,
        "gop_seconds": args.gop_seconds,
        "num_frames": args.num_frames,
        "seek_ms_median": round(seek_med, 1),
        "seek_ms_runs": [round(t, 1) for t in seek_ms],
        "baseline_ms_median": round(base_med, 1),
        "baseline_ms_runs": [round(t, 1) for t in base_ms],
        "speedup": round(base_med / seek_med, 1),
        "target_speedup": 10.0,
        "max_mean_abs_diff": round(max(diffs), 4),
        "same_frames": max(diffs) < 0.5,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "pyav": av.__version__,
    }

    print("| file | frames | seek-based (median ms) | decode-all baseline (median ms) | speedup | same frames |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.minutes:g} min {args.height}p H.264, {args.fps} fps, keyframe every {args.gop_seconds:g} s "
        f"| {args.num_frames} | {seek_med:.1f} | {base_med:.1f} | {base_med / seek_med:.1f}x "
        f"| {'yes' if result['same_frames'] else 'NO'} (max mean abs diff {max(diffs):.3f}) |"
    )
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["same_frames"] else 1


if __name__ == "__main__":
    sys.exit(main())
