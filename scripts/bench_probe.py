#!/usr/bin/env python
"""Benchmark: wall time of one frozen MAP probe (``encoder.videoprism.probe.probe_accuracy``, default
``ProbeConfig``: 30 epochs) on random tokens of tiny-encoder shapes, e.g. 16 frames x 4 patches
(36 px, patch 18) x 32 channels, and 16 x 16 (72 px) x 64 channels.

Two attention implementations are timed alternately in the same run:

* ``folded`` (ours, ``encoder.videoprism.probe.SingleQueryAttention``): key/value projections folded onto the
  single query, O(B M D H);
* ``torch`` (baseline): ``torch.nn.MultiheadAttention`` with the query expanded over the batch,
  O(B M D^2). Same function (tests/encoder/videoprism/test_probe.py checks the equality), so the accuracies match up to
  float rounding.

Example::

    python scripts/bench_probe.py --clips 2000 --shapes 64x32 256x64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import encoder.videoprism.probe as probe_module  # noqa: E402
from encoder.videoprism.probe import ProbeConfig, probe_accuracy  # noqa: E402

FOLDED = probe_module.SingleQueryAttention


class TorchMultiheadAttention(nn.Module):
    """The baseline: the same single-query attention through ``nn.MultiheadAttention``."""

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.query = nn.Parameter(torch.randn(width) * width**-0.5)
        self.attention = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(tokens.shape[0], 1, -1)
        return self.attention(query, tokens, tokens, need_weights=False)[0][:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000, help="train clips (plus a quarter as many test clips)")
    parser.add_argument("--shapes", nargs="+", default=["64x32", "256x64"], help="MxD token shapes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=ProbeConfig().epochs)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    rows = []
    for shape in args.shapes:
        tokens, width = (int(v) for v in shape.split("x"))
        generator = torch.Generator().manual_seed(0)
        train = torch.randn(args.clips, tokens, width, generator=generator)
        test = torch.randn(args.clips // 4, tokens, width, generator=generator)
        train_labels = torch.randint(0, 8, (args.clips,), generator=generator)
        test_labels = torch.randint(0, 8, (args.clips // 4,), generator=generator)
        row = {"tokens": tokens, "width": width, "clips": args.clips, "threads": args.threads, "epochs": args.epochs}
        for name, attention in (("folded", FOLDED), ("torch", TorchMultiheadAttention)):
            probe_module.SingleQueryAttention = attention
            started = time.perf_counter()
            accuracy = probe_accuracy(
                train,
                train_labels,
                test,
                test_labels,
                ProbeConfig(epochs=args.epochs),
                seed=0,
                num_threads=args.threads,
            )
            row[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
            row[f"{name}_accuracy_random_labels"] = round(accuracy, 3)
        probe_module.SingleQueryAttention = FOLDED
        row["speedup"] = round(row["torch_seconds"] / row["folded_seconds"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
