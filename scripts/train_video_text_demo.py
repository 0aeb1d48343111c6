"""Train the demo video-text model (zero-shot search and classification on the shapes corpus) and score it.

LiT from scratch (``prism-vlm pretrain lit`` without ``--init-from``): the demo model's encoder is
locked; a new text tower, auxiliary layer and MAP head learn the contrastive loss on the captions
of the corpus' training clips (the demo pipeline's stage-1 manifest: the 3000-clip corpus' train
split plus the 15000 pretraining clips, one phrasing per clip). Then, on ``--eval-split``:
text->video and video->text retrieval over every caption phrasing of every clip, and zero-shot
colour and shape (one-object clips) and motion (all clips) as classification over label phrases,
each with a prompt ensemble over the other attributes (colour: "a {} circle", "a {} square", ...).

    python scripts/train_video_text_demo.py --work WORK [--encoder vlm/demo_model/encoder] [--steps 1500] \\
        [--eval-split val|test] [--install vlm/demo_model/video_text]

Stages, each skipped when its output exists (a killed run resumes; LiT from its checkpoints):
WORK/corpus and WORK/pretrain_corpus (``make-shapes``, seed 0, the demo's full profile),
WORK/manifests, WORK/lit, WORK/eval-SPLIT.json and .md. ``--install DIR`` copies the trained model
there (the shipped one is ``vlm/demo_model/video_text``); nothing is overwritten without it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's vlm and encoder

from vlm.demo_pipeline.profiles import PROFILES  # noqa: E402
from vlm.demo_pipeline.stages import make_corpus, make_pretraining_corpus, pretraining_manifests  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MOTION_LABELS = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "growing": "growing",
    "shrinking": "shrinking",
    "rotating": "rotating",
    "still": "staying still",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--encoder", type=Path, default=REPO / "vlm" / "demo_model" / "encoder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--eval-split", choices=("val", "test"), default="val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--install", type=Path, default=None, help="copy the trained model into this directory")
    return parser.parse_args(argv)


def train(args, manifest: Path, profile) -> Path:
    from encoder.videoprism.pretrain.lit import LitConfig, run_lit
    from encoder.videoprism.pretrain.stage1 import ModelSize

    out = args.work / "lit"
    if (out / "model" / "config.json").is_file():
        return out / "model"
    size = ModelSize(
        num_auxiliary_layers=profile.auxiliary_layers,
        text_layers=args.text_layers,
        max_text_length=profile.max_text_length,
    )
    config = LitConfig(
        output_dir=str(out),
        train_manifests=[str(manifest)],
        encoder=str(args.encoder),
        model=size,
        vocab_size=profile.vocab_size,
        batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=args.lr,
        warmup_steps=max(1, args.steps // 10),
        seed=args.seed,
        cache_clips=False,
        cache_encoder_tokens=True,
        checkpoint_every=max(50, args.steps // 5),
        log_every=max(1, min(25, args.steps // 10)),
        progress=False,
        cpu_threads=args.threads,
    )
    return run_lit(config)


def labelled_manifests(corpus: Path, split: str, out: Path) -> dict[str, tuple[Path, list[str], list[str]]]:
    """{attribute: (manifest, labels, templates)} for zero-shot colour, shape (one-object clips) and motion (all)."""
    from vlm.shapes import PALETTE, SHAPES, read_attributes

    out.mkdir(parents=True, exist_ok=True)
    clips = read_attributes(corpus, split)
    colours = list(PALETTE)
    tasks = {
        "colour": (colours, [f"a {{}} {shape}" for shape in SHAPES]),
        "shape": (list(SHAPES), [f"a {colour} {{}}" for colour in colours]),
        "motion": (list(MOTION_LABELS.values()), [f"a {shape} {{}}" for shape in SHAPES]),
    }
    written = {}
    for attribute, (labels, templates) in tasks.items():
        rows = []
        for clip in clips:
            if attribute != "motion" and len(clip.objects) != 1:
                continue
            label = MOTION_LABELS[clip.motion] if attribute == "motion" else getattr(clip.objects[0], attribute)
            rows.append({"video": str((corpus / clip.video).resolve()), "id": clip.id, "label": label})
        path = out / f"{split}_{attribute}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        written[attribute] = (path, labels, templates)
    return written


def evaluate(args, model_dir: Path, corpus: Path) -> dict:
    from vlm.retrieval.evaluation import (
        evaluate_retrieval,
        evaluate_zero_shot,
        read_captioned_clips,
        read_labelled_clips,
    )
    from vlm.retrieval.video_text_model import load_video_text_model

    model = load_video_text_model(model_dir)
    split = args.eval_split
    results = {"split": split, "model": str(model_dir)}
    results["retrieval"] = evaluate_retrieval(
        model, read_captioned_clips(corpus / split / "captions.jsonl"), progress=False
    )
    for attribute, (manifest, labels, templates) in labelled_manifests(corpus, split, args.work / "eval").items():
        scores, _ = evaluate_zero_shot(model, read_labelled_clips(manifest), labels, templates, progress=False)
        results[attribute] = scores["classification"]
    return results


def markdown(results: dict) -> str:
    r = results["retrieval"]
    lines = [
        f"Split: **{results['split']}** ({r['clips']} clips, {r['captions']} captions; chance R@1 {r['chance_R@1']:.2f}%).",
        "",
        "| retrieval | R@1 | R@5 | R@10 | median rank |",
        "|---|---:|---:|---:|---:|",
    ]
    for direction in ("text_to_video", "video_to_text"):
        m = r[direction]
        lines.append(
            f"| {direction.replace('_', ' ')} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | {m['median_rank']:g} |"
        )
    lines += ["", "| zero-shot | clips | top-1 | chance |", "|---|---:|---:|---:|"]
    for attribute in ("colour", "shape", "motion"):
        c = results[attribute]
        lines.append(f"| {attribute} | {c['items']} | {c['top1']:.1f} | {c['chance_top1']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    profile = PROFILES["full"]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    corpus = make_corpus(args.work, profile, args.seed)
    pretrain_corpus = make_pretraining_corpus(args.work, profile, corpus)
    manifest, _ = pretraining_manifests(args.work, [corpus, pretrain_corpus], args.seed)
    model_dir = train(args, manifest, profile)
    trained = time.time()
    results = evaluate(args, model_dir, corpus)
    results["minutes"] = {
        "corpus_and_training": round((trained - started) / 60, 1),
        "evaluation": round((time.time() - trained) / 60, 1),
    }
    (args.work / f"eval-{args.eval_split}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (args.work / f"eval-{args.eval_split}.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    if args.install:
        if args.install.exists():
            shutil.rmtree(args.install)
        shutil.copytree(model_dir, args.install, ignore=shutil.ignore_patterns("pretraining.json"))
        print(f"installed {model_dir} -> {args.install}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
