"""``prism-vlm eval-caption``, ``eval-qa`` and ``convert-annotations``: thin layers over
:mod:`vlm.evaluation.data`, :mod:`vlm.evaluation.metrics.captions`, :mod:`vlm.evaluation.qa` and
:mod:`vlm.convert.annotations` (nothing heavy is imported at module level), and the results writers
(:func:`write_json`, :func:`write_outputs`)."""

from __future__ import annotations

import argparse
import json

from encoder.common.atomic_files import write_json
from encoder.common.cli_arguments import NEW_TOKENS, NON_NEGATIVE, POSITIVE
from encoder.common.errors import UsageError


def write_outputs(args: argparse.Namespace, results: dict, markdown: str) -> None:
    """--out JSON, --markdown table, and the table (or with --json the JSON) on stdout."""
    if args.out:
        write_json(args.out, results)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(markdown)
    print(json.dumps(results, indent=2) if args.json else markdown, end="" if not args.json else "\n")


def _cmd_eval_caption(args: argparse.Namespace) -> int:
    from vlm.evaluation.data import read_caption_predictions, read_caption_references
    from vlm.evaluation.metrics.captions import caption_markdown, evaluate_captions

    results = evaluate_captions(
        read_caption_predictions(args.pred), read_caption_references(args.refs), allow_missing=args.allow_missing
    )
    from vlm.evaluation.protocol import protocol_card

    results = {"predictions": args.pred, "references": args.refs, **results}
    results["protocol"] = protocol_card(
        data={"predictions": args.pred, "references": args.refs}, settings={"allow_missing": args.allow_missing}
    )
    write_outputs(args, results, caption_markdown(results))
    return 0


def _cmd_eval_qa(args: argparse.Namespace) -> int:
    from encoder.videoprism.loading import default_device
    from vlm.evaluation.data import read_qa
    from vlm.evaluation.qa import evaluate_qa, qa_markdown

    wups_scorer = None
    if args.wups:  # before any model work: a missing WordNet fails here, with install instructions
        from vlm.evaluation.wups import WupsScorer, load_wordnet

        wordnet = load_wordnet(args.wordnet_dir)
        wups_scorer = WupsScorer(args.wups, wordnet=wordnet, stopwords=args.stopwords)
    test = read_qa(args.data, args.video_root)
    train = read_qa(args.shots, args.video_root) if args.shots else []
    val = read_qa(args.tune_k_on, args.video_root) if args.tune_k_on else []
    extra = [example.answer for path in args.extra_vocab for example in read_qa(path)]
    candidates = None
    if args.candidates_file:
        from vlm.inference.scoring import read_candidates

        candidates = read_candidates(path=args.candidates_file)
    if args.mode == "open" and (args.k is not None or args.tune_k_on or candidates is not None):
        raise UsageError("--k, --tune-k-on and --candidates-file apply to --mode closed")

    from encoder.videoprism.features import FeatureCache
    from vlm.inference.assistant import load_assistant

    features = FeatureCache(args.features) if args.features else None
    device = args.device or default_device()
    assistant = load_assistant(args.model, device=device, load_video_encoder=features is None)
    results, records = evaluate_qa(
        assistant,
        test,
        args.mode,
        train=train,
        val=val,
        num_shots=args.num_shots,
        seed=args.seed,
        k=args.k,
        tune=bool(args.tune_k_on),
        candidates=candidates,
        extra_vocabulary=extra,
        wups_scorer=wups_scorer,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        features=features,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    from vlm.evaluation.protocol import protocol_card
    from vlm.hub import default_model_dir

    results = {"data": args.data, "model": str(args.model), **results}
    results["protocol"] = protocol_card(
        glue=assistant.model,
        glue_dir=args.model or default_model_dir(),
        data={
            "data": args.data,
            "shots": args.shots,
            "tune_k_on": args.tune_k_on,
            "candidates_file": args.candidates_file,
            **{f"extra_vocab_{i}": path for i, path in enumerate(args.extra_vocab)},
        },
        settings={
            "mode": args.mode,
            "num_shots": args.num_shots,
            "seed": args.seed,
            "k": args.k,
            "max_new_tokens": args.max_new_tokens,
            "generation": "greedy",
            "wups": args.wups,
            "features": args.features,
        },
    )
    if args.predictions:
        from encoder.common.jsonl import write_jsonl_atomically

        write_jsonl_atomically(args.predictions, records)
    write_outputs(args, results, qa_markdown(results))
    return 0


def _cmd_convert_annotations(args: argparse.Namespace) -> int:
    from vlm.convert.annotations import convert_annotations

    written = convert_annotations(args.format, args.src, args.out)
    for path, count in written.items():
        print(f"{path}\t{count}")
    return 0


def add_output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", default=None, help="write the results JSON here")
    command.add_argument("--markdown", default=None, help="write the markdown table here")
    command.add_argument("--json", action="store_true", help="print the results JSON instead of the table")


def add_subcommand(subparsers) -> None:
    """Register eval-caption, eval-qa and convert-annotations."""
    from vlm.convert.annotations import FORMATS

    caption = subparsers.add_parser(
        "eval-caption", help="CIDEr-D, BLEU-4 and ROUGE-L of caption predictions (COCO toolkit scores, offline)"
    )
    caption.add_argument("--pred", required=True, help='JSONL of {"video": id, "caption": text}')
    caption.add_argument("--refs", required=True, help='JSONL of {"video": id, "captions": [text, ...]}')
    caption.add_argument(
        "--allow-missing", action="store_true", help="score clips without a prediction as empty captions"
    )
    add_output_options(caption)
    caption.set_defaults(func=_cmd_eval_caption)

    qa = subparsers.add_parser("eval-qa", help="zero-shot video QA accuracy (and WUPS) with the paper's protocol")
    qa.add_argument("--data", required=True, help='test JSONL of {"video", "question", "answer", ["type"]}')
    qa.add_argument("--mode", required=True, choices=["open", "closed"], help="greedy answers, or ranked candidates")
    k_choice = qa.add_mutually_exclusive_group()
    k_choice.add_argument("--k", type=POSITIVE, default=None, help="closed vocabulary size (default 250)")
    k_choice.add_argument(
        "--tune-k-on", default=None, metavar="VAL", help="choose K over 100/250/500/1000/2000 on this val JSONL"
    )
    qa.add_argument(
        "--shots", default=None, metavar="TRAIN", help="training JSONL: two-shot prompts and the vocabulary"
    )
    qa.add_argument(
        "--num-shots", type=NON_NEGATIVE, default=2, help="text-only examples drawn from --shots (default 2)"
    )
    qa.add_argument("--seed", type=int, default=0, help="seed for drawing the shot questions (default 0)")
    qa.add_argument(
        "--extra-vocab", nargs="*", default=[], metavar="QA", help="more QA files whose answers join the vocabulary"
    )
    qa.add_argument("--candidates-file", default=None, help="closed vocabulary given explicitly, one answer per line")
    qa.add_argument(
        "--wups",
        nargs="?",
        const="nextqa",
        default=None,
        choices=["nextqa", "malinowski"],
        help="also report WUPS@0.0 and @0.9 (protocol: nextqa, the default, or malinowski); needs WordNet",
    )
    qa.add_argument("--stopwords", default=None, help="stop-word file for NExT-QA WUPS (e.g. NExT-QA's stopwords.txt)")
    qa.add_argument("--wordnet-dir", default=None, help="WordNet 3.0 database directory (default: found automatically)")
    qa.add_argument("--model", default=None, help="saved glue model directory (default: the installed demo model)")
    qa.add_argument("--features", default=None, help="feature cache: use cached encoder tokens, no decoding")
    qa.add_argument("--video-root", default=None, help="folder the QA files' video paths are relative to")
    qa.add_argument("--batch-size", type=POSITIVE, default=8, help="questions per forward pass (default 8)")
    qa.add_argument("--max-new-tokens", type=NEW_TOKENS, default=32, help="open answers: greedy steps (default 32)")
    qa.add_argument("--workers", type=NON_NEGATIVE, default=2, help="decoding worker processes (default 2)")
    qa.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    qa.add_argument("--predictions", default=None, help="write one JSON line per question (prediction, correct, WUPS)")
    qa.add_argument("--no-progress", action="store_true")
    add_output_options(qa)
    qa.set_defaults(func=_cmd_eval_qa)

    convert = subparsers.add_parser(
        "convert-annotations", help="convert public QA / caption / conversation annotations to prism-vlm manifests"
    )
    convert.add_argument("format", choices=sorted(FORMATS), help="annotation format")
    convert.add_argument("src", help="dataset folder in its documented layout (see docs/evaluation.md)")
    convert.add_argument("out", help="output folder for the JSONL manifests")
    convert.set_defaults(func=_cmd_convert_annotations)
