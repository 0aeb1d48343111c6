"""Train the shipped demo model end to end on the synthetic moving-shapes corpus, and measure it.

    python scripts/train_demo.py --profile full --docs --model-out vlm/demo_model   # the shipped model: < 2 h on a
                                                            # 2-core CPU; writes it and docs/REPRODUCTION.md
                                                            # (without --model-out: WORK/demo_model)
    python scripts/train_demo.py --profile quick            # a shorter run (it answered at chance)
    python scripts/train_demo.py --profile smoke --work /tmp/demo-smoke   # a few minutes, for checking the pipeline

Stages (each skipped when its output exists, so a killed run resumes where it stopped; the pretraining
and glue stages also resume from their own checkpoints):

    corpus     prism-vlm make-shapes                       WORK/corpus/
               + pretraining clips (profile pretrain_clips)  WORK/pretrain_corpus/  (train split only, stages 1-2)
    stage1     video-text contrastive pretraining           WORK/stage1/model/   (tokenizer trained on the captions)
    stage2     masked video modelling from stage 1           WORK/stage2/model/
    features   frozen tokens of every clip (stage 2; stage 1 on train + test, for its probe)  WORK/features/<encoder>/
    glue       resampler with frozen SmolLM2-135M-Instruct  WORK/glue/model/
    export     the demo model directory                     MODEL_OUT/ (glue + encoder/ inside it, README.md)
    evaluate   QA (closed / open), captions, baselines       WORK/evaluation.json
    probes     frozen MAP probes (colour, shape, motion)     WORK/probes.json
    ablations  stage-2 variants, their train + test features and probes  WORK/stage2_<name>/ (last: the model comes first)
    report     summary + docs                               WORK/summary.json, WORK/summary.md (+ --docs)

Per-stage wall-clock times go to WORK/timings.json (a resumed run keeps the times of stages it skips).
The pipeline itself is the package vlm.demo_pipeline; this script is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing it

from vlm.demo_pipeline.pipeline import rewrite_report, run_pipeline, show_progress  # noqa: E402
from vlm.demo_pipeline.profiles import STAGES, add_profile_arguments, parsed_profile, record_profile  # noqa: E402
from vlm.demo_pipeline.workdir import RunError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_arguments(parser)
    parser.add_argument("--work", default=None, help="working directory (default: runs/demo-PROFILE)")
    parser.add_argument(
        "--model-out",
        default=None,
        help="demo model directory (default: WORK/demo_model; pass vlm/demo_model to replace the shipped one)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", action="store_true", help="write docs/REPRODUCTION.md and its PNGs")
    parser.add_argument("--stop-after", choices=STAGES, default=None, help="stop after this stage")
    parser.add_argument(
        "--glue-stop-early",
        action="store_true",
        help="use the newest glue checkpoint as the trained glue (when time runs out; recorded)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report (summary, demo README, --docs) from WORK's saved results; trains nothing",
    )
    parser.add_argument(
        "--change-profile",
        action="store_true",
        help="continue a run whose profile differs (logged in WORK/profile_changes.jsonl)",
    )
    args = parser.parse_args(argv)
    args.demo_profile = parsed_profile(parser, args)  # an unknown --set field: a usage error
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    show_progress()
    profile = args.demo_profile
    work = Path(args.work or REPO / "runs" / f"demo-{profile.name}").resolve()
    model_out = Path(args.model_out or work / "demo_model").resolve()  # the shipped model changes only when asked
    docs_dir = REPO / "docs" if args.docs else None
    command = "python scripts/train_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    work.mkdir(parents=True, exist_ok=True)
    try:
        record_profile(work, profile, allow_change=args.change_profile)
        if args.report_only:
            rewrite_report(work, profile, args.seed, command, model_out, docs_dir)
        else:
            run_pipeline(
                work,
                profile,
                args.seed,
                command,
                model_out,
                docs_dir,
                stop_after=args.stop_after,
                glue_stop_early=args.glue_stop_early,
            )
    except RunError as error:
        raise SystemExit(str(error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
