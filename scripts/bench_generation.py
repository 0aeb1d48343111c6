"""transformers' generate() against the hand-written greedy loop it replaced, side by side, on the
shipped demo model: the same outputs, and the time of each.

The previous loop (``vlm/inference/generation.py`` before commit 633a286: one cached forward per step, rows
stopping at EOS or at a newline token) is kept here, verbatim in its logic, as the baseline.
Workloads: captions of the three example clips, batch 1 and batch 3 (32 new tokens, stop at a
newline); open answers to three questions (batch 3); a chat reply (up to 64 tokens). Each is timed
``--repeats`` times after one warm-up, alternating the two implementations.

    python scripts/bench_generation.py [--repeats 5] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vlm.chat_template import chat_inference_ids  # noqa: E402
from vlm.inference.assistant import VideoAssistant  # noqa: E402
from vlm.inference.generation import generate_ids, llm_step, newline_stopper, pad_token_id, stop_token_ids  # noqa: E402

CLIPS = ["cyan_star_moving_down.mp4", "green_star_rotating.mp4", "water_bottle_drumming.mp4"]
QUESTIONS = ["what colour is the star?", "how is the object moving?", "what?"]


@torch.inference_mode()
def previous_greedy(llm, tokenizer, inputs, max_new_tokens: int, stop_at_newline: bool) -> list[list[int]]:
    """The greedy loop the library used before generate(): prefill, then one token per row per step."""
    stop_ids = stop_token_ids(llm, tokenizer)
    is_newline = newline_stopper(tokenizer) if stop_at_newline else None
    embeds, mask, positions = inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids
    batch = embeds.shape[0]
    cache = DynamicCache(config=llm.config)
    logits = llm_step(
        llm, inputs_embeds=embeds, attention_mask=mask, position_ids=positions, kv_cache=cache, last_logits_only=True
    )
    finished = torch.zeros(batch, dtype=torch.bool)
    position = positions[:, -1:]
    generated: list[list[int]] = [[] for _ in range(batch)]
    pad = pad_token_id(tokenizer)
    for step in range(max_new_tokens):
        tokens = logits[:, -1].argmax(dim=-1)
        tokens = torch.where(finished, torch.full_like(tokens, pad), tokens)
        for row, token in enumerate(tokens.tolist()):
            if finished[row]:
                continue
            if token in stop_ids:
                finished[row] = True
                continue
            generated[row].append(token)
            if is_newline is not None and is_newline(token):
                finished[row] = True
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        logits = llm_step(llm, input_ids=tokens[:, None], attention_mask=mask, position_ids=position, kv_cache=cache)
    return generated


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vlm.inference.generation import GenerationSettings
    from vlm.model import load_model

    model = load_model(None)
    llm, tokenizer = model.llm, model.tokenizer
    clips = VideoAssistant(model).load_videos([REPO / "apps" / "examples" / name for name in CLIPS])
    with torch.inference_mode():
        features = model.get_video_features(clips)
        caption_prompt = model.config.prompts.caption_prompt
        workloads = {
            "caption, batch 1": (VideoAssistant(model).prompt_inputs(features[:1], [caption_prompt]), 32, True),
            "caption, batch 3": (VideoAssistant(model).prompt_inputs(features, [caption_prompt] * 3), 32, True),
            "open answer, batch 3": (
                VideoAssistant(model).prompt_inputs(features, [VideoAssistant(model).qa_prompt(q) for q in QUESTIONS]),
                32,
                True,
            ),
        }
        chat = chat_inference_ids(tokenizer, [{"role": "user", "content": "Describe the video."}])
        workloads["chat reply, batch 1"] = (
            model.get_prompt_embeddings(features[:1], [chat.prefix_ids], [chat.suffix_ids]),
            64,
            False,
        )

    rows = []
    for name, (inputs, max_new_tokens, newline) in workloads.items():

        def old():
            return previous_greedy(llm, tokenizer, inputs, max_new_tokens, newline)

        def new():
            with torch.inference_mode():
                return generate_ids(
                    llm,
                    tokenizer,
                    inputs.inputs_embeds,
                    inputs.attention_mask,
                    GenerationSettings(max_new_tokens=max_new_tokens),
                    stop_at_newline=newline,
                )

        old_ids, new_ids = old(), new()  # warm-up, and the outputs compared
        times = {"previous loop": [], "generate()": []}
        for _ in range(args.repeats):
            for label, run in (("previous loop", old), ("generate()", new)):
                started = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - started)
        row = {
            "workload": name,
            "same_tokens": old_ids == new_ids,
            "tokens": sum(len(r) for r in new_ids),
            "previous_s": statistics.median(times["previous loop"]),
            "generate_s": statistics.median(times["generate()"]),
        }
        row["generate_vs_previous"] = row["generate_s"] / row["previous_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
