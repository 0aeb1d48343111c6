"""How close ``vlm.evaluation.wups`` ("nextqa" protocol) comes to NExT-QA's official open-ended evaluation.

NExT-OE (github.com/doc-doc/NExT-OE, MIT) publishes a prediction file of its HGA model on the val
split with the WUPS its ``eval_oe.py`` computes (README "Results on Val": WUPS_C 14.76, WUPS_T 14.90,
WUPS_D 46.60, WUPS 21.48). This script scores the same predictions with ``vlm.evaluation.wups`` and prints both.

    python scripts/compare_nextqa_wups.py --nextoe NEXT_OE_CHECKOUT [--stopwords NEXT_OE/stopwords.txt]

NEXT_OE_CHECKOUT needs ``dataset/nextqa/val.csv`` and ``results/HGA-same-att-qns23ans7-val.json``
(``stopwords.txt`` is in the repository's first commit).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PUBLISHED = {"WUPS_C": 14.76, "WUPS_T": 14.90, "WUPS_D": 46.60, "WUPS": 21.48}  # NExT-OE README, HGA, val, WUPS@0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nextoe", required=True, type=Path)
    parser.add_argument("--stopwords", default=None)
    args = parser.parse_args(argv)
    from vlm.evaluation.wups import WupsScorer

    predictions = json.loads((args.nextoe / "results" / "HGA-same-att-qns23ans7-val.json").read_text())
    with open(args.nextoe / "dataset" / "nextqa" / "val.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    scorer = WupsScorer("nextqa", stopwords=args.stopwords)
    totals: dict[str, list[float]] = {}
    for row in rows:
        kind = "TN" if row["type"] in ("TN", "TP") else row["type"]
        score = scorer.score(predictions[row["video"]][row["qid"]], row["answer"], 0.0, kind)
        totals.setdefault(kind[0], []).append(score)
    ours = {f"WUPS_{group}": 100 * sum(scores) / len(scores) for group, scores in sorted(totals.items())}
    ours["WUPS"] = 100 * sum(sum(s) for s in totals.values()) / sum(len(s) for s in totals.values())
    print("| | " + " | ".join(PUBLISHED) + " |")
    print("|---|" + "---:|" * len(PUBLISHED))
    print("| official eval_oe.py (published) | " + " | ".join(f"{PUBLISHED[k]:.2f}" for k in PUBLISHED) + " |")
    print("| vlm.evaluation.wups nextqa | " + " | ".join(f"{ours[k]:.2f}" for k in PUBLISHED) + " |")
    print(f"({len(rows)} questions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
