"""Where a glue model's closed-vocabulary answers on a shapes corpus go wrong: accuracy per question
type, split by the clip's object count, by whether a colour question names the object by its shape,
and by answer (motion, shape). Scored from a feature cache, per-type candidates (as train_demo does).

    python scripts/qa_breakdown.py --model runs/demo-full/glue/model --features runs/demo-full/features/stage2 \\
        --corpus runs/demo-full/corpus --split val --json-out runs/demo-full/qa_breakdown_val.json

Use the val split to decide what to change; the test split is for the final report only.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

GENERIC_OBJECT_WORDS = ("object", "the shape")  # "what colour is the object / the shape?" names no shape


def breakdown(examples, predictions, counts: dict[str, int]) -> dict[str, dict]:
    """{group: {"accuracy": %, "count": n}} for the groups described in the module docstring.

    examples: QAExample list; predictions: one answer per example; counts: video -> object count."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for example, predicted in zip(examples, predictions):
        correct = predicted == example.answer
        kind = example.question_type
        objects = counts[example.video]
        groups[kind].append(correct)
        groups[f"{kind}, {objects} object(s)"].append(correct)
        if kind == "colour":
            named = not any(word in example.question for word in GENERIC_OBJECT_WORDS)
            groups[f"colour, {objects} object(s), {'names the shape' if named else 'generic question'}"].append(correct)
        if kind in ("motion", "shape"):
            groups[f"{kind} = {example.answer}"].append(correct)
    return {
        name: {"accuracy": 100.0 * sum(values) / len(values), "count": len(values)}
        for name, values in sorted(groups.items())
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a glue model directory")
    parser.add_argument("--features", required=True, type=Path, help="the encoder's feature cache of the split")
    parser.add_argument("--corpus", required=True, type=Path, help="the make-shapes corpus")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    from encoder.common.atomic_files import write_json
    from encoder.videoprism.features import FeatureCache
    from vlm.evaluation.data import read_qa
    from vlm.evaluation.qa_inference import score_candidates
    from vlm.inference.assistant import VideoAssistant
    from vlm.model import PrismVlmForConditionalGeneration
    from vlm.shapes import ALL_ANSWERS, ANSWER_VOCABULARY, read_attributes

    model = PrismVlmForConditionalGeneration.from_pretrained(args.model, load_video_encoder=False)
    examples = read_qa(args.corpus / args.split / "qa.jsonl")
    counts = {
        str((args.corpus / clip.video).resolve()): clip.count for clip in read_attributes(args.corpus, args.split)
    }
    counts = {example.video: counts[str(Path(example.video).resolve())] for example in examples}
    candidates = list(ALL_ANSWERS)
    scores = score_candidates(
        VideoAssistant(model),
        examples,
        candidates,
        (),
        batch_size=args.batch_size,
        features=FeatureCache(args.features),
        num_workers=0,
    )
    column = {candidate: i for i, candidate in enumerate(candidates)}
    predictions = [
        max(ANSWER_VOCABULARY[e.question_type], key=lambda word: row[column[word]]) for e, row in zip(examples, scores)
    ]
    result = breakdown(examples, predictions, counts)
    print(f"| {args.split} split | accuracy (%) | questions |\n|---|---:|---:|")
    for name, entry in result.items():
        print(f"| {name} | {entry['accuracy']:.1f} | {entry['count']} |")
    if args.json_out:
        write_json(args.json_out, {"model": str(args.model), "split": args.split, "groups": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
