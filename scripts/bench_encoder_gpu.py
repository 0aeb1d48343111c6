"""GPU: VideoPrism-B 16x288x288 clips/s by attention kernel, with the fraction of peak FLOP/s.

Paths (``--paths``), all through ``encoder.load_encoder(dir, dtype, device, attn_implementation)`` on
the same random-init weights (transformers ``VideoPrismVisionConfig()`` = VideoPrism-B):

* ``eager``: transformers' eager attention (materialised scores, softcap, fp32 softmax);
* ``flex_attention``: PyTorch flex attention, the softcap in its ``score_mod`` (a fused,
  softcap-capable kernel; transformers compiles the kernel only, the rest of the model runs eagerly);
* ``flash_attention_2``: FlashAttention-2 with its ``softcap`` argument, if ``flash_attn`` is
  installed (otherwise a "not installed" row);
* ``compile``: ``torch.compile`` of the eager model (``--compile-mode``);
* ``compile_flex`` (not in the default set): ``torch.compile`` of the flex-attention model (on CPU,
  torch 2.13's C++ flex template fails to lower it inside the whole-model graph; untried on CUDA).

Each (path, batch) runs one first call (timed on its own: it includes compilation), ``--warmup``
untimed calls, then ``--repeats`` timed calls (``torch.cuda.synchronize`` after each); clips/s is
batch / median time. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed calls
(weights + activations). Agreement is against the eager path's tokens for the same input (max abs
diff, min and mean per-token cosine). FLOPs per clip come from ``encoder.videoprism.flops`` (matmuls only:
patch embedding, q/k/v/o, Q K^T and P V, MLPs), about 0.97 TFLOP for 16x288x288; achieved
TFLOP/s = FLOPs per clip x clips/s, as a fraction of the GPU's dense bf16 peak (``--peak-tflops``,
default from the device name: H100 SXM / H200 989, H100 PCIe 756, H100 NVL 835, A100 312).

    python scripts/bench_encoder_gpu.py --json-out bench_out/encoder_gpu.json
    python scripts/bench_encoder_gpu.py --paths eager compile --compile-mode max-autotune-no-cudagraphs \\
        --json-out bench_out/encoder_gpu_autotune.json
    python scripts/bench_encoder_gpu.py --device cpu --tiny      # CPU smoke run of every code path
    python scripts/bench_encoder_gpu.py --flops-only              # the FLOP count per clip only
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

from encoder.videoprism.flops import videoprism_forward_flops
from encoder.videoprism.loading import load_encoder, resolve_dtype

PATHS = ("eager", "flex_attention", "flash_attention_2", "compile", "compile_flex")
DEFAULT_PATHS = ("eager", "flex_attention", "flash_attention_2", "compile")
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = (("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def default_peak_tflops(device_name: str) -> float | None:
    name = device_name.upper()
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def tiny_config(softcap: float = 5.0) -> VideoPrismVisionConfig:
    """A few-layer VideoPrism for the CPU smoke run and tests/encoder/videoprism/test_attention_backends.py: 4 frames of
    32 px; initializer_range 0.3 (not 0.02) makes attention logits reach about 4, so a softcap of 5
    bends them."""
    return VideoPrismVisionConfig(
        image_size=32,
        num_frames=4,
        tubelet_size=[1, 8, 8],
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_spatial_layers=2,
        num_temporal_layers=1,
        initializer_range=0.3,
        attn_logit_softcapping=softcap,
    )


def attn_implementation_of(path: str) -> str:
    return {"compile": "eager", "compile_flex": "flex_attention"}.get(path, path)


def build(path: str, model_dir: Path, dtype: torch.dtype, device: torch.device, compile_mode: str):
    model = load_encoder(model_dir, dtype=dtype, device=device, attn_implementation=attn_implementation_of(path))

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return model(pixel_values_videos=pixels).last_hidden_state

    if path.startswith("compile"):
        return torch.compile(forward, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
    return forward


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_path(forward, pixels: torch.Tensor, warmup: int, repeats: int, device: torch.device) -> dict:
    with torch.no_grad():
        start = time.perf_counter()
        out = forward(pixels)
        synchronize(device)
        first_call_s = time.perf_counter() - start
        for _ in range(warmup):
            forward(pixels)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = forward(pixels)
            synchronize(device)
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"first_call_s": first_call_s, "times_s": times, "peak_mem_gib": peak, "out": out.detach().float().cpu()}


def agreement(out: torch.Tensor, ref: torch.Tensor) -> dict:
    cosine = F.cosine_similarity(out.flatten(0, -2).double(), ref.flatten(0, -2).double(), dim=-1)
    return {
        "max_abs_diff_vs_eager": float((out - ref).abs().max()),
        "mean_abs_diff_vs_eager": float((out - ref).abs().mean()),
        "min_cosine_vs_eager": float(cosine.min()),
        "mean_cosine_vs_eager": float(cosine.mean()),
    }


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| path | batch | clips/s | ms / batch | TFLOP/s | of peak | peak mem GiB | first call s | "
        "max abs diff vs eager | min cosine vs eager | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        fraction = row.get("fraction_of_peak")
        lines.append(
            f"| {row['path']} | {row['batch']} | {fmt(row.get('clips_per_s'), '.2f')} | "
            f"{fmt(row.get('median_s') and row['median_s'] * 1e3, '.1f')} | {fmt(row.get('tflops'), '.4g')} | "
            f"{fmt(fraction and fraction * 100, '.1f')}{'%' if fraction is not None else ''} | "
            f"{fmt(row.get('peak_mem_gib'), '.2f')} | {fmt(row.get('first_call_s'), '.1f')} | "
            f"{fmt(row.get('max_abs_diff_vs_eager'), '.2e')} | {fmt(row.get('min_cosine_vs_eager'), '.6f')} | "
            f"{' '.join(row.get('note', '').replace('|', '/').split())} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke run), fp32 unless --dtype")
    parser.add_argument("--dtype", default=None, help="weights dtype (default: bf16, fp32 with --tiny)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), choices=PATHS)
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode for the compile paths: default, max-autotune-no-cudagraphs, max-autotune, ...",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first call")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device (TFLOP/s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--flops-only", action="store_true", help="print the FLOP count per clip and exit")
    args = parser.parse_args(argv)
    if args.flops_only:
        config = tiny_config() if args.tiny else VideoPrismVisionConfig()
        print(json.dumps(videoprism_forward_flops(config), indent=2))
        return 0

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here; use --device cpu --tiny for the CPU smoke run")
    dtype = resolve_dtype(args.dtype or ("fp32" if args.tiny else "bf16"))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    peak_tflops = args.peak_tflops
    if peak_tflops is None and device.type == "cuda":
        peak_tflops = default_peak_tflops(device_name)
        if peak_tflops is None:
            parser.error(f"no known bf16 peak for {device_name!r}: pass --peak-tflops")
    if peak_tflops is not None and dtype != torch.bfloat16:
        print(f"note: --peak-tflops is a bf16 peak; the weights here are {dtype}", flush=True)

    config = tiny_config() if args.tiny else VideoPrismVisionConfig()
    frames, size = config.num_frames, config.image_size
    flops = videoprism_forward_flops(config)
    print(
        f"device: {device_name} | torch {torch.__version__} | transformers {transformers.__version__} | {dtype}\n"
        f"config: {'tiny' if args.tiny else 'VideoPrism-B'} {frames}x{size}x{size}, hidden {config.hidden_size}, "
        f"{config.num_spatial_layers}+{config.num_temporal_layers} layers, softcap {config.attn_logit_softcapping}\n"
        f"FLOPs per clip: {flops['total'] / 1e12:.4g} TFLOP = {flops['total']:,} ("
        + ", ".join(f"{key} {value / 1e9:.4g} G" for key, value in flops.items() if key not in ("total", "tokens"))
        + ")"
        + (f"\npeak: {peak_tflops:g} TFLOP/s dense bf16" if peak_tflops else ""),
        flush=True,
    )

    torch.manual_seed(args.seed)
    rows: list[dict] = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "videoprism"
        VideoPrismVisionModel(config).save_pretrained(model_dir)
        generator = torch.Generator().manual_seed(args.seed + 1)
        inputs = {b: torch.rand(b, frames, 3, size, size, generator=generator) for b in args.batch}
        references: dict[int, torch.Tensor] = {}
        for path in args.paths:
            if path == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
                rows.extend({"path": path, "batch": b, "note": "not installed (flash_attn)"} for b in args.batch)
                print("\n".join(markdown_table(rows[-len(args.batch) :]).splitlines()[2:]), flush=True)
                continue
            try:
                forward = build(path, model_dir, dtype, device, args.compile_mode)
            except Exception as error:  # noqa: BLE001 - one path failing must not lose the others
                failed = True
                rows.extend({"path": path, "batch": b, "note": f"load failed: {error!r}"[:300]} for b in args.batch)
                print("\n".join(markdown_table(rows[-len(args.batch) :]).splitlines()[2:]), flush=True)
                continue
            for batch in args.batch:
                row = {"path": path, "batch": batch, "attn_implementation": attn_implementation_of(path)}
                if path.startswith("compile"):
                    row["compile_mode"] = args.compile_mode
                try:
                    pixels = inputs[batch].to(device=device, dtype=dtype)
                    result = time_path(forward, pixels, args.warmup, args.repeats, device)
                except Exception as error:  # noqa: BLE001
                    failed = True
                    row["note"] = f"failed: {error!r}"[:300]
                    rows.append(row)
                    print(markdown_table([row]).splitlines()[-1], flush=True)
                    continue
                out = result.pop("out")
                if path == "eager":
                    references[batch] = out
                median = statistics.median(result["times_s"])
                row.update(result, median_s=median, clips_per_s=batch / median)
                row["tflops"] = flops["total"] * row["clips_per_s"] / 1e12
                row["fraction_of_peak"] = row["tflops"] / peak_tflops if peak_tflops else None
                if batch in references:
                    row.update(agreement(out, references[batch]))
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)
            del forward
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print("\n" + markdown_table(rows), flush=True)
    if args.json_out:
        report = {
            "device": device_name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "dtype": str(dtype).removeprefix("torch."),
            "config": "tiny" if args.tiny else "VideoPrism-B",
            "frames": frames,
            "size": size,
            "softcap": config.attn_logit_softcapping,
            "flops_per_clip": flops,
            "peak_tflops": peak_tflops,
            "compile_mode": args.compile_mode,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
            "rows": rows,
        }
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
