"""Benchmark (a) of the foundation issue: encoder clips/s of prism-vlm's extraction path
(``encoder.videoprism.features.encode_clips``) against a plain transformers ``VideoPrismVisionModel`` forward
with the same weights (VideoPrism-B config, random init), side by side in one run.

Each configuration (frames x batch x precision) times both paths alternately, ``--repeats`` times
each after one warm-up, and reports the median. Plain bf16 = the same model under
``torch.autocast(bfloat16)``, which is what a transformers user would do.

    python scripts/bench_encoder.py --json-out bench_out/encoder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

from encoder.videoprism.features import cpu_supports_bf16, encode_clips


def plain_forward(model, clips_bthwc: torch.Tensor, precision: str) -> torch.Tensor:
    pixels = clips_bthwc.permute(0, 1, 4, 2, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model(pixel_values_videos=pixels, interpolate_pos_encoding=True).last_hidden_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--bf16-batch", type=int, nargs="+", default=None, help="batch sizes for bf16 (default: --batch)"
    )
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = VideoPrismVisionConfig()  # VideoPrism-B: 768 wide, 12 spatial + 4 temporal layers, 16x288x288
    model = VideoPrismVisionModel(config).eval().requires_grad_(False)
    model.prism_source = "random-init videoprism-base"
    rows = []
    for precision in args.precision:
        for frames in args.frames:
            batches = args.bf16_batch if (precision == "bf16" and args.bf16_batch) else args.batch
            for batch in batches:
                clips = torch.rand(batch, frames, args.size, args.size, 3)
                times = {"ours": [], "plain": []}
                outputs = {}
                for repeat in range(args.repeats + 1):
                    for name in ("ours", "plain"):
                        start = time.perf_counter()
                        if name == "ours":
                            outputs[name] = encode_clips(model, clips, precision=precision)
                        else:
                            outputs[name] = plain_forward(model, clips, precision).float()
                        elapsed = time.perf_counter() - start
                        if repeat:  # repeat 0 is the warm-up
                            times[name].append(elapsed)
                max_diff = float((outputs["ours"] - outputs["plain"]).abs().max())
                row = {
                    "precision": precision,
                    "frames": frames,
                    "batch": batch,
                    "ours_clips_per_s": batch / statistics.median(times["ours"]),
                    "plain_clips_per_s": batch / statistics.median(times["plain"]),
                    "max_abs_diff": max_diff,
                }
                row["ours_over_plain"] = row["ours_clips_per_s"] / row["plain_clips_per_s"]
                rows.append(row)
                print(
                    f"| {precision} | {frames} | {batch} | {row['ours_clips_per_s']:.3f} | "
                    f"{row['plain_clips_per_s']:.3f} | {row['ours_over_plain']:.2f}x | {max_diff:.1e} |",
                    flush=True,
                )
    for frames in args.frames:
        for batch in args.batch:
            by = {r["precision"]: r for r in rows if r["frames"] == frames and r["batch"] == batch}
            if "fp32" in by and "bf16" in by:
                gain = by["bf16"]["ours_clips_per_s"] / by["fp32"]["ours_clips_per_s"]
                print(f"bf16 gain (ours), {frames} frames, batch {batch}: {gain:.2f}x")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "cpu_native_bf16": cpu_supports_bf16(),
        "rows": rows,
    }
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
