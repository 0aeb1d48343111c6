"""Benchmark of lmms-eval multiple-choice scoring through ``prism_vlm``, side by side in one run.

Two local lmms-eval ``multiple_choice`` tasks over generated shapes clips (``--clips`` clips, their questions):
``words`` (every question's choices: all the corpus' answers, mostly one token each) and ``captions`` (five
caption choices per question: its clip's first caption and four other clips', several tokens each, as in
NExT-QA's options). The demo glue (SmolLM2-135M-Instruct) scores them through lmms-eval's ``simple_evaluate``:

- ``prism_vlm``: what ships (a question's choices share one decode, one encode and the prompt's prefix; one-token
  choices of ``--batch-size`` questions in one forward);
- baseline ``one choice at a time``: the same model called with one request per call, as lmms-eval's models
  score (each choice decodes and encodes its video and runs the whole prompt again).

Reported per task: questions/s and choices/s of the ``loglikelihood`` calls alone (model loading and lmms-eval's
own work excluded), the accuracy of each and the largest difference between their scores (they must agree).

    python scripts/bench_lmms_scoring.py [--clips 12] [--batch-size 8] [--workers 2] [--device cpu] [--json-out FILE]

Needs the lmms extra (``pip install 'prism-vlm[lmms]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from vlm.evaluation.lmms_model import PrismVlm

UTILS = """
def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_choice(doc):
    return doc["choices"]
"""

TASK = """task: bench_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function bench_utils.doc_to_visual
doc_to_text: question
doc_to_choice: !function bench_utils.doc_to_choice
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


class TimedPrismVlm(PrismVlm):
    """``prism_vlm`` with the wall time of its loglikelihood calls."""

    seconds = 0.0

    def loglikelihood(self, requests):
        start = time.perf_counter()
        try:
            return super().loglikelihood(requests)
        finally:
            self.seconds += time.perf_counter() - start


class OneChoiceAtATime(TimedPrismVlm):
    """The baseline: one request per call (each decodes, encodes and runs the whole prompt)."""

    def loglikelihood(self, requests):
        start = time.perf_counter()
        try:
            return [PrismVlm.loglikelihood(self, [request])[0] for request in requests]
        finally:
            self.seconds += time.perf_counter() - start


def write_tasks(folder: Path, clips: int) -> dict[str, int]:
    """The two tasks' data and YAMLs; returns questions per task."""
    from vlm.shapes.corpus import make_shapes_corpus

    corpus = make_shapes_corpus(folder / "corpus", clips, seed=41, progress=False)
    qa = [json.loads(line) for line in (corpus / "qa.jsonl").read_text().splitlines()]
    captions = [json.loads(line) for line in (corpus / "captions.jsonl").read_text().splitlines()]
    answers = sorted({q["answer"] for q in qa})
    words = [
        {"video": str(corpus / q["video"]), "question": q["question"], "answer": q["answer"], "choices": answers}
        for q in qa
    ]
    rng = np.random.default_rng(0)
    caption_rows = []
    for index, clip in enumerate(captions):
        others = [
            c["caption"][0] for j, c in enumerate(captions) if j != index and c["caption"][0] != clip["caption"][0]
        ]
        choices = [clip["caption"][0], *rng.choice(others, size=min(4, len(others)), replace=False).tolist()]
        rng.shuffle(choices)
        caption_rows.append(
            {
                "video": str(corpus / clip["video"]),
                "question": "what happens in the video?",
                "answer": clip["caption"][0],
                "choices": choices,
            }
        )
    (folder / "bench_utils.py").write_text(UTILS.lstrip())
    counts = {}
    for name, rows in (("words", words), ("captions", caption_rows)):
        data = folder / f"{name}.json"
        data.write_text(json.dumps(rows))
        (folder / f"bench_{name}.yaml").write_text(TASK.format(name=name, data=data))
        counts[name] = len(rows)
    return counts


def run(model: TimedPrismVlm, task: str, folder: Path) -> tuple[float, float, list]:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    model.seconds = 0.0
    out = simple_evaluate(
        model=model, tasks=[f"bench_{task}"], task_manager=TaskManager(include_path=str(folder)), log_samples=True
    )
    samples = sorted(out["samples"][f"bench_{task}"], key=lambda s: s["doc_id"])
    scores = [[response[0][0] for response in sample["resps"]] for sample in samples]
    return model.seconds, out["results"][f"bench_{task}"]["acc,none"], scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="prism_vlm's decoding processes (its default, 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        counts = write_tasks(folder, args.clips)
        common = {"device": args.device, "batch_size": args.batch_size}
        shipped, baseline = TimedPrismVlm(workers=args.workers, **common), OneChoiceAtATime(workers=0, **common)
        run(shipped, "words", folder)  # warm-up (first decode, first forwards)
        results = {}
        for task, questions in counts.items():
            base_s, base_acc, base_scores = run(baseline, task, folder)
            ship_s, ship_acc, ship_scores = run(shipped, task, folder)
            choices = sum(len(row) for row in ship_scores)
            difference = max(abs(a - b) for x, y in zip(ship_scores, base_scores) for a, b in zip(x, y))
            results[task] = {
                "questions": questions,
                "choices": choices,
                "prism_vlm": {"seconds": ship_s, "questions_per_s": questions / ship_s, "accuracy": ship_acc},
                "one_choice_at_a_time": {
                    "seconds": base_s,
                    "questions_per_s": questions / base_s,
                    "accuracy": base_acc,
                },
                "speedup": base_s / ship_s,
                "max_abs_score_difference": difference,
            }
    report = {"machine": platform.processor() or platform.machine(), "args": vars(args), "results": results}
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
