"""Score a glue model on one split of a shapes corpus exactly as ``train_demo.py`` scores the test split
(closed vocabulary per type and pooled, open vocabulary, captions), from a feature cache of the
model's own encoder. For comparing recipes on the val split; the test split is for the final report.

    prism-vlm features --encoder MODEL/encoder --videos WORK/corpus/val/captions.jsonl --out CACHE --frames 8 --size 64
    python scripts/eval_glue_split.py --model MODEL --features CACHE --corpus WORK/corpus --split val \\
        --json-out val_scores.json

Prints one JSON line: closed-vocabulary accuracy per type, open-vocabulary accuracy, CIDEr-D.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's vlm and encoder

from encoder.common.atomic_files import write_json  # noqa: E402
from vlm.demo_pipeline.evaluation import caption_refs, evaluate_model, spread  # noqa: E402
from vlm.demo_pipeline.profiles import PROFILES  # noqa: E402
from vlm.demo_pipeline.stages import split_videos  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a glue model directory")
    parser.add_argument("--features", required=True, type=Path, help="its encoder's feature cache of the split")
    parser.add_argument("--corpus", required=True, type=Path, help="the make-shapes corpus")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="full",
        help="its evaluation sizes: open questions, captioned clips, caption length, batch",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    return parser.parse_args(argv)


def score_split(assistant, corpus: Path, split: str, features, profile) -> tuple[dict, list]:
    """(closed/open-vocabulary QA and caption scores of ``model`` on the split, its QA examples), from
    ``features`` (a FeatureCache of the model's encoder), as the demo pipeline (``vlm.demo_pipeline.evaluation``) scores test."""
    from vlm.evaluation.data import read_qa
    from vlm.shapes import ALL_ANSWERS

    videos = split_videos(corpus, split)
    examples = read_qa(corpus / split / "qa.jsonl")
    result = evaluate_model(
        assistant,
        examples,
        list(ALL_ANSWERS),
        features,
        profile,
        caption_refs(corpus, [split]),
        videos[: profile.caption_clips or None],
        spread(examples, profile.open_questions),
    )
    return result, examples


def main(argv=None) -> int:
    args = parse_args(argv)
    from encoder.training.threads import torch_threads
    from encoder.videoprism.features import FeatureCache
    from vlm.inference.assistant import VideoAssistant
    from vlm.model import PrismVlmForConditionalGeneration

    profile = PROFILES[args.profile]
    refs_path = args.corpus / args.split / "refs.jsonl"
    if not refs_path.is_file():
        raise SystemExit(f"{refs_path} is missing: not a make-shapes corpus split")
    with torch_threads(args.threads):
        model = PrismVlmForConditionalGeneration.from_pretrained(args.model, load_video_encoder=False)
        result, examples = score_split(
            VideoAssistant(model), args.corpus, args.split, FeatureCache(args.features), profile
        )
    result = {"model": str(args.model), "split": args.split, "questions": len(examples), **result}
    if args.json_out:
        write_json(args.json_out, result)
    print(
        json.dumps(
            {
                "closed_per_type": {
                    kind: round(entry["accuracy"], 1) for kind, entry in result["closed_per_type"]["per_type"].items()
                },
                "closed_all": round(result["closed_per_type"]["accuracy"], 1),
                "open_all": round(result["open"]["accuracy"], 1),
                "cider_d": round(100 * result["captions"]["cider_d"], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
