#!/usr/bin/env python
"""Benchmark: generating the moving-shapes corpus (``make_shapes_corpus``), and how little a single
frame says about the motion.

1. Speed: ``--num`` clips with ``--workers 1`` and with ``--workers 2`` (the baseline: one process),
   each into a fresh folder, timed end to end (render + H.264 encode + manifests); clips/s and the
   ratio. The two corpora are also compared byte for byte (they must be identical).
2. Single-frame cue check (``--middle-frame-check``): a small CNN trained on the DECODED middle frame
   (frame T//2, what a single-frame baseline sees) of the train split to predict the motion, scored on
   the test split, next to the same CNN trained on the first and last frames stacked (which does see
   the motion). Chance is 1/8; the corpus is built so that the middle-frame CNN stays near it.

Example::

    python scripts/bench_shapes.py --num 2000 --middle-frame-check --json-out bench_out/shapes.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from vlm.shapes import ShapesConfig, make_shapes_corpus, read_attributes  # noqa: E402


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def time_generation(num: int, seed: int, workdir: Path) -> dict:
    results = {}
    for workers in (1, 2):
        out = workdir / f"corpus_w{workers}"
        started = time.perf_counter()
        make_shapes_corpus(out, num, seed=seed, config=ShapesConfig(), workers=workers, progress=False)
        seconds = time.perf_counter() - started
        results[f"workers_{workers}"] = {"seconds": round(seconds, 2), "clips_per_second": round(num / seconds, 1)}
    results["speedup_2_vs_1"] = round(
        results["workers_2"]["clips_per_second"] / results["workers_1"]["clips_per_second"], 2
    )
    results["identical_files"] = _files(workdir / "corpus_w1") == _files(workdir / "corpus_w2")
    size = sum(p.stat().st_size for p in (workdir / "corpus_w1" / "videos").rglob("*.mp4"))
    results["mp4_kib_per_clip"] = round(size / num / 1024, 1)
    return results


def _frames(corpus: Path, clips, which: str) -> np.ndarray:
    """Decoded frames as float [B, C, S, S]: the middle frame (C=3) or first+last (C=6)."""
    from encoder.video.decode import load_clip

    batches = []
    for clip in clips:
        frames = load_clip(corpus / clip.video, num_frames=clip.num_frames, size=None)
        chosen = [frames[clip.middle_frame]] if which == "middle" else [frames[0], frames[-1]]
        batches.append(np.concatenate([f.transpose(2, 0, 1) for f in chosen], axis=0))
    return np.stack(batches).astype(np.float32)


def motion_from_frames(corpus: Path, which: str, epochs: int, seed: int = 0) -> float:
    """Test accuracy of a small CNN predicting the motion from decoded frames (see module docstring)."""
    import torch
    from torch import nn

    from vlm.shapes import MOTIONS

    train = read_attributes(corpus, "train") + read_attributes(corpus, "val")
    test = read_attributes(corpus, "test") + read_attributes(corpus, "test_compositional")
    index = {m: i for i, m in enumerate(MOTIONS)}
    x_train, x_test = torch.from_numpy(_frames(corpus, train, which)), torch.from_numpy(_frames(corpus, test, which))
    y_train = torch.tensor([index[c.motion] for c in train])
    y_test = torch.tensor([index[c.motion] for c in test])
    torch.manual_seed(seed)
    channels = x_train.shape[1]
    model = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(64 * 16, 128),
        nn.ReLU(),
        nn.Linear(128, len(MOTIONS)),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x_test[s : s + 256]).argmax(-1) for s in range(0, len(x_test), 256)])
    return float((predictions == y_test).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--middle-frame-check", action="store_true")
    parser.add_argument("--epochs", type=int, default=15, help="CNN epochs of the middle-frame check")
    parser.add_argument("--workdir", default=None, help="where the corpora go (default: a temporary folder)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(args.workdir or temporary)
        results = {
            "command": " ".join(sys.argv),
            "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
            "num_clips": args.num,
            "generation": time_generation(args.num, args.seed, workdir),
        }
        if args.middle_frame_check:
            corpus = workdir / "corpus_w1"
            results["motion_accuracy_cnn"] = {
                "chance": round(1 / 8, 3),
                "middle_frame": round(motion_from_frames(corpus, "middle", args.epochs), 3),
                "first_and_last_frames": round(motion_from_frames(corpus, "first_last", args.epochs), 3),
            }
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
