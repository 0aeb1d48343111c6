"""What decoding a clip in a process of its own costs (the crash isolation of
``encoder.video.workers.decode_isolated``) against decoding it in this process.

    python scripts/bench_isolated_decode.py [--clip PATH] [--repeats 5]

Prints the median seconds per clip for the demo model's input (8 frames of 64 px) and for
VideoPrism's (16 frames of 288 px), after one warm-up of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from encoder.video.clips import ClipDecodeDataset, list_clips
    from encoder.video.workers import decode_isolated

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default=str(REPO / "apps" / "examples" / "water_bottle_drumming.mp4"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    clips = list_clips([args.clip])
    print("| frames x size | in this process (s) | in a process of its own (s) |\n|---|---:|---:|")
    for frames, size in ((8, 64), (16, 288)):
        dataset = ClipDecodeDataset(clips, frames, size)
        dataset[0], decode_isolated(dataset, 0)  # warm-up
        here, isolated = [], []
        for _ in range(args.repeats):
            began = time.perf_counter()
            dataset[0]
            here.append(time.perf_counter() - began)
            began = time.perf_counter()
            decode_isolated(dataset, 0)
            isolated.append(time.perf_counter() - began)
        print(f"| {frames} x {size} | {statistics.median(here):.3f} | {statistics.median(isolated):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
