"""Training-step time of VideoPrism pretraining: stage 1 with 50% tube token drop vs no drop, and stage 2.

One step = the full training step of ``encoder.videoprism.pretrain`` (masked encoder forward, heads, loss,
backward, Adafactor update) on synthetic in-memory batches, so decoding is not measured. Stage 2's
step includes the frozen teacher's forward on the intact clip (no teacher cache).

Variants are timed in interleaved rounds (round r times every variant in turn), so a shared or
throttled machine affects them alike; the reported time is the median step of all rounds, and the
token-drop speed-up is the ratio of the two stage-1 medians from the same run. Process CPU time is
reported beside wall time: on a CPU shared with other jobs, ``--threads 1`` and CPU time are the
numbers least disturbed by the other jobs (several threads then mostly wait for each other).

    python scripts/bench_pretrain.py --config tiny small            # CPU-sized models
    python scripts/bench_pretrain.py --config base --device cuda    # VideoPrism-B, 8 x 288 px clips
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoder.videoprism.factorized import encode_visible_tokens  # noqa: E402
from encoder.videoprism.masking import make_mask, visible_indices  # noqa: E402
from encoder.videoprism.pretrain.heads import (  # noqa: E402
    DecoderConfig,
    GlobalDistillationHead,
    TokenDistillationHead,
    pool_video_tokens,
    shuffle_permutations,
)
from encoder.videoprism.pretrain.losses import LogitScale, contrastive_loss, cosine_distance  # noqa: E402
from encoder.videoprism.pretrain.stage1 import ContrastiveModel, ModelSize, new_clip_model  # noqa: E402
from encoder.videoprism.pretrain.stage2 import DistillationModel  # noqa: E402

SIZES = {
    "tiny": ModelSize.tiny(),  # 64 wide, 2+1 layers, 8 x 64 px, patch 16 (16 positions per frame)
    "small": ModelSize(
        hidden_size=128,
        num_attention_heads=4,
        intermediate_size=512,
        num_spatial_layers=4,
        num_temporal_layers=2,
        num_auxiliary_layers=1,
        num_frames=8,
        image_size=128,
        patch_size=16,
        text_layers=2,
        max_text_length=16,
    ),  # 64 positions per frame
    "base": ModelSize.base(),  # VideoPrism-B: 768 wide, 12+4 layers, 8 x 288 px, patch 18 (256 positions per frame)
}
VOCAB = 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stage1Step:
    def __init__(self, size: ModelSize, batch: int, drop_ratio: float, device, autocast_dtype):
        self.model = ContrastiveModel(new_clip_model(size, VOCAB, seed=0), LogitScale()).to(device).train()
        self.optimizer = torch.optim.Adafactor([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.rand(batch, size.num_frames, 3, size.image_size, size.image_size, generator=generator).to(
            device
        )
        self.ids = torch.randint(3, VOCAB, (batch, size.max_text_length), generator=generator).to(device)
        self.mask = torch.ones_like(self.ids)
        self.grid = (size.image_size // size.patch_size,) * 2
        self.batch, self.drop_ratio, self.device, self.dtype = batch, drop_ratio, device, autocast_dtype

    def __call__(self, step: int) -> None:
        visible = visible_indices(make_mask("tube", self.batch, self.grid, self.drop_ratio, rng=step)).to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            video, text, scale = self.model(self.pixels, visible, self.ids, self.mask)
        contrastive_loss(video, text, scale).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class Stage2Step:
    def __init__(self, size: ModelSize, batch: int, device, autocast_dtype):
        clip = new_clip_model(size, VOCAB, seed=0)
        self.teacher = clip.video_model.to(device).eval().requires_grad_(False)
        config = self.teacher.config
        student = new_clip_model(size, VOCAB, seed=1).video_model.vision_model
        decoder = DecoderConfig()
        self.model = (
            DistillationModel(
                student,
                TokenDistillationHead(config, decoder, config.hidden_size),
                GlobalDistillationHead(config, decoder, config),
            )
            .to(device)
            .train()
        )
        self.optimizer = torch.optim.Adafactor(self.model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.rand(batch, size.num_frames, 3, size.image_size, size.image_size, generator=generator).to(
            device
        )
        self.grid = (size.image_size // size.patch_size,) * 2
        self.length = size.num_frames * self.grid[0] * self.grid[1]
        self.batch, self.device, self.dtype = batch, device, autocast_dtype

    def __call__(self, step: int) -> None:
        mask = make_mask("block", self.batch, self.grid, 0.65, rng=step)
        visible = visible_indices(mask).to(self.device)
        permutation = shuffle_permutations(self.batch, self.length, True, torch.Generator().manual_seed(step)).to(
            self.device
        )
        everything = torch.arange(self.grid[0] * self.grid[1], device=self.device).expand(self.batch, -1)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            with torch.no_grad():
                teacher_tokens = encode_visible_tokens(self.teacher.vision_model, self.pixels, everything)
                teacher_global = pool_video_tokens(self.teacher, teacher_tokens)
            tokens, pooled = self.model(self.pixels, visible, permutation)
        loss = cosine_distance(tokens, teacher_tokens) + cosine_distance(pooled, teacher_global)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def bench_size(name: str, args, device, autocast_dtype) -> dict:
    size = SIZES[name]
    variants = {
        "stage1, 50% tube drop": Stage1Step(size, args.batch_size, 0.5, device, autocast_dtype),
        "stage1, no drop": Stage1Step(size, args.batch_size, 0.0, device, autocast_dtype),
        "stage2 (BEVT 0.65, shuffle, global)": Stage2Step(size, args.batch_size, device, autocast_dtype),
    }
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v: [] for v in variants}
    step = 0
    for variant, run in variants.items():  # warm-up (allocator, kernels, Adafactor state)
        for _ in range(args.warmup):
            run(step)
            step += 1
    _sync(device)
    for _ in range(args.rounds):
        for variant, run in variants.items():
            for _ in range(args.steps):
                _sync(device)
                began, began_cpu = time.perf_counter(), time.process_time()
                run(step)
                _sync(device)
                times[variant].append(time.perf_counter() - began)
                cpu_times[variant].append(time.process_time() - began_cpu)
                step += 1
    medians = {v: statistics.median(t) for v, t in times.items()}
    cpu_medians = {v: statistics.median(t) for v, t in cpu_times.items()}
    return {
        "config": name,
        "model": {
            k: getattr(size, k)
            for k in (
                "hidden_size",
                "num_spatial_layers",
                "num_temporal_layers",
                "num_frames",
                "image_size",
                "patch_size",
            )
        },
        "batch_size": args.batch_size,
        "median_step_seconds": medians,
        "median_step_cpu_seconds": cpu_medians,
        "steps_timed_per_variant": len(next(iter(times.values()))),
        "drop_speedup": medians["stage1, no drop"] / medians["stage1, 50% tube drop"],
        "drop_speedup_cpu_time": cpu_medians["stage1, no drop"] / cpu_medians["stage1, 50% tube drop"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", choices=sorted(SIZES), default=["tiny", "small"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast (CUDA)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    machine = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
    }
    results = []
    for name in args.config:
        result = bench_size(name, args, device, autocast_dtype)
        results.append(result)
        print(f"[{name}] batch {args.batch_size} on {machine['device']} ({args.precision}):")
        for variant, seconds in result["median_step_seconds"].items():
            cpu = result["median_step_cpu_seconds"][variant]
            print(f"  {variant:38s} {seconds * 1000:9.1f} ms/step wall  {cpu * 1000:9.1f} ms/step process CPU")
        print(
            f"  token drop speed-up (no drop / 50% drop): {result['drop_speedup']:.2f}x wall, "
            f"{result['drop_speedup_cpu_time']:.2f}x process CPU"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
