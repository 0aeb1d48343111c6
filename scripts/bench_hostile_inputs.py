"""Decoding cost of hostile files, this checkout against a baseline revision of encoder/video/decode.py,
side by side in one run (each measurement in a fresh process, so peak memory is its own).

    python scripts/bench_hostile_inputs.py [--baseline REV] [--app-baseline REV] [--work DIR]

Decoder files (made with PyAV):
- one_keyframe.mp4: 64x64, 100 fps, 200 s, a single keyframe (20,000 frames);
- keyframes.mp4: the same clip with a keyframe every second (the normal case);
- size_switch.ts: 20 frames of 64x64 then 20 of 4000x4000 (the header says 64x64).

Upload files (tests/helpers/hostile_media.py), each through what the app does with an upload: the
header check (open, duration, packet scan when the header has none) then decoding 16 frames at 288
px with the app's default limits (4096 px a side, 60 s), against ``--app-baseline`` (default fccf18d,
before these defences); wall and CPU seconds and peak memory over the footprint before:
- raw_h264.mp4: a raw H.264 stream of two frames and 800,000 access-unit delimiters, named .mp4;
- sample_count.mp4: 50 million one-byte samples declared by a 660-byte mp4;
- huge_frames.mkv: 64x64 MJPEG header, then four 16000x16000 grey JPEGs;
- empty_packets.mkv: a live recording (no duration) of one frame and 8.2 million empty packets.

For each file and decoder (for the size switch also the current one with ``max_side=256``, as the
app decodes with ``--max-side``): frames decoded, wall seconds and peak resident memory over the
process's footprint before the call (MB), for 16 and 32 sampled frames at the app's output size.
``--baseline REV`` (default: the commit before the bounded decoder, 6b1b874) reads that revision's
encoder/video/decode.py with ``git show``; without git the baseline column is skipped.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_video(path: Path, frames, fps: int, gop: int | None = None, times_ms=None, container_format=None) -> Path:
    import av
    import numpy as np

    frames = list(frames)
    height, width = frames[0].shape[:2]
    time_base = Fraction(1, 1000) if times_ms is not None else Fraction(1, fps)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        options = {"preset": "ultrafast"}
        if gop is not None:
            stream.codec_context.gop_size = gop
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        stream.options = options
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24").reformat(format="yuv420p")
            frame.pts = times_ms[index] if times_ms is not None else index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_files(work: Path) -> dict[str, Path]:
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    ramp = lambda i, side: np.full((side, side, 3), (i * 7) % 256, np.uint8)  # noqa: E731
    files = {
        "one_keyframe.mp4": lambda p: write_video(p, (ramp(i, 64) for i in range(20_000)), fps=100, gop=30_000),
        "keyframes.mp4": lambda p: write_video(p, (ramp(i, 64) for i in range(20_000)), fps=100, gop=100),
    }
    out = {}
    for name, make in files.items():
        if not (work / name).is_file():
            make(work / name)
        out[name] = work / name
    switch = work / "size_switch.ts"
    if not switch.is_file():
        parts = []
        for index, side in enumerate((64, 4000)):
            part = work / f"part{index}.ts"
            write_video(
                part,
                (ramp(i, side) for i in range(20)),
                fps=10,
                times_ms=[100 * (20 * index + i) for i in range(20)],
                container_format="mpegts",
            )
            parts.append(part)
        switch.write_bytes(b"".join(p.read_bytes() for p in parts))
        for part in parts:
            part.unlink()
    out["size_switch.ts"] = switch
    return out


def make_upload_files(work: Path) -> dict[str, Path]:
    from tests.helpers import hostile_media

    makers = {
        "raw_h264.mp4": lambda p: hostile_media.raw_h264_named_mp4(p, 800_000),
        "sample_count.mp4": lambda p: hostile_media.sample_count_mp4(p, 50_000_000),
        "huge_frames.mkv": lambda p: hostile_media.size_switch_mjpeg_mkv(p, 16_000),
        "empty_packets.mkv": lambda p: hostile_media.delimiter_packets_mkv(p, 8_200_000),
    }
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, make in makers.items():
        if not (work / name).is_file():
            make(work / name)
        out[name] = work / name
    return out


def app_child(args) -> None:
    """The app's handling of one upload in this fresh process (header check, then decoding); prints JSON."""
    import numpy as np

    module = load_decoder("current" if args.app_child == "current" else "baseline", args.app_baseline, args.work)
    module.load_clip(np.zeros((2, 8, 8, 3), np.uint8), num_frames=2, size=8)
    path = Path(args.file)
    before = peak_resident_mb()
    began, cpu = time.perf_counter(), time.process_time()
    try:
        if args.app_child == "current":
            from apps.limits import AppLimits, VideoRejectedError, check_video

            limits = AppLimits()
            try:
                check_video(path, limits)
            except VideoRejectedError as error:
                raise module.VideoDecodeError(path, str(error)) from error
        else:  # the baseline's header check: open, duration from the header or from every packet
            limits = None
            with module.open_video(path) as container:
                stream = module.video_stream(container, path)
                if module.stream_duration(container, stream) is None:
                    module.packet_time_span(container, stream)
        module.load_clip(path, num_frames=16, size=288, max_side=4096, time_limit_s=60.0)
        outcome = "read"
    except module.VideoDecodeError as error:
        outcome = f"refused: {error.reason}"
    print(
        json.dumps(
            {
                "outcome": outcome[:90],
                "seconds": round(time.perf_counter() - began, 2),
                "cpu": round(time.process_time() - cpu, 2),
                "peak_mb": round(peak_resident_mb() - before, 1),
            }
        )
    )


def load_decoder(which: str, baseline: str, work: Path):
    if which.startswith("current"):
        import encoder.video.decode as module

        return module
    source = work / f"video_{baseline}.py"
    if not source.is_file():
        for path in (
            "encoder/video/decode.py",
            "encoder/video.py",
        ):  # the decoder's path now, and before the layout change
            shown = subprocess.run(["git", "show", f"{baseline}:{path}"], cwd=REPO, capture_output=True, text=True)
            if shown.returncode == 0:
                source.write_text(shown.stdout)
                break
        else:
            raise SystemExit(f"no decoder module in commit {baseline}")
    spec = importlib.util.spec_from_file_location(f"video_{baseline}", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def peak_resident_mb() -> float:
    """This process's peak resident memory (VmHWM, MB). Unlike getrusage's ru_maxrss it starts
    afresh at exec, so a child does not inherit its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    import numpy as np

    module = load_decoder(args.child, args.baseline, args.work)
    path = Path(args.file)
    # warm the codec libraries on another file, so the footprint before the call includes them
    module.load_clip(np.zeros((2, 8, 8, 3), np.uint8), num_frames=2, size=8)
    before = peak_resident_mb()
    began = time.perf_counter()
    try:
        if hasattr(module, "MIN_FRAME_BUDGET"):
            max_side = 256 if args.child == "current-limit" else None
            frames, stats = module._decode_frames_with_stats(path, args.frames, size=288, max_side=max_side)
        else:
            frames, stats = module._decode_frames_with_stats(path, args.frames)
            [module.center_crop(module.resize_shorter_side(f, 288)[None], 288) for f in frames]
        outcome = f"{stats.frames_decoded} frames"
    except module.VideoDecodeError as error:
        outcome = f"refused: {error.reason}"
    seconds = time.perf_counter() - began
    peak = peak_resident_mb() - before
    print(json.dumps({"outcome": outcome, "seconds": round(seconds, 2), "peak_mb": round(peak, 1)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="6b1b874", help="git revision of the baseline encoder/video/decode.py")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "prism-vlm-bench-hostile")
    parser.add_argument("--app-baseline", default="fccf18d", help="git revision before the upload defences")
    parser.add_argument("--child", choices=("current", "current-limit", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--app-child", choices=("current", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.app_child:
        app_child(args)
        return 0
    upload_rows = [
        "| upload | handled by | outcome | wall s | CPU s | peak memory over start (MB) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, path in make_upload_files(args.work).items():
        for which in ("baseline", "current"):
            command = [sys.executable, __file__, "--app-child", which, "--file", str(path)]
            command += ["--app-baseline", args.app_baseline, "--work", str(args.work)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
            label = "current" if which == "current" else f"baseline {args.app_baseline}"
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                upload_rows.append(f"| {name} | {label} | failed: {tail[:80]} | | | |")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            upload_rows.append(
                f"| {name} | {label} | {result['outcome']} | {result['seconds']} | {result['cpu']} | {result['peak_mb']} |"
            )
    print("\n".join(upload_rows) + "\n")
    files = make_files(args.work)
    rows = [
        "| file | frames sampled | decoder | outcome | seconds | peak memory over start (MB) |",
        "|---|---:|---|---|---:|---:|",
    ]
    for name, path in files.items():
        for frames in (16, 32):
            for which in ("baseline", "current") + (("current-limit",) if name == "size_switch.ts" else ()):
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        which,
                        "--file",
                        str(path),
                        "--frames",
                        str(frames),
                        "--baseline",
                        args.baseline,
                        "--work",
                        str(args.work),
                    ],
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                )
                if done.returncode != 0:
                    rows.append(f"| {name} | {frames} | {which} | failed: {done.stderr.strip().splitlines()[-1]} | | |")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                label = {
                    "current": "current",
                    "current-limit": "current, max_side 256 (the app passes --max-side)",
                }.get(which, f"baseline {args.baseline}")
                rows.append(
                    f"| {name} | {frames} | {label} | {result['outcome']} | {result['seconds']} | {result['peak_mb']} |"
                )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
