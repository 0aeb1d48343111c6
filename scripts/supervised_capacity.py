"""Can the demo encoder's architecture see shape and motion at all? A supervised upper bound.

Trains the profile's VideoPrism vision tower from scratch (``--set patch_size=8`` etc. to vary it),
with one linear head per attribute on its mean-pooled tokens, directly on the labels of the
one-object training clips (colour, shape, motion), and scores it on the one-object **val** clips.
No text tower, no contrastive loss, no token dropping: if this reaches high shape accuracy where
the stage-1 encoder's frozen probe does not, the architecture can represent shape and the
pretraining signal is what falls short; if it does not, the architecture (patch size, width) is
the limit. ``--tower cnn`` trains a small convolutional network instead (four 3x3 conv layers with
batch norm per frame, spatial max pool, the frames' features concatenated in order): the same clips,
labels and steps, as the reference for what the labels allow. Diagnostic only; the demo pipeline
does not use it.

Writes WORK/result.json: val accuracy per attribute, steps, seconds.

    python scripts/supervised_capacity.py --corpus runs/demo-full/corpus --pretrain-corpus runs/demo-full/pretrain_corpus \\
        --work runs/capacity/p16 --steps 600 --threads 2
    python scripts/supervised_capacity.py ... --work runs/capacity/p8 --set patch_size=8
    python scripts/supervised_capacity.py ... --work runs/capacity/cnn --tower cnn
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's vlm and encoder

from encoder.common.atomic_files import write_json  # noqa: E402
from vlm.demo_pipeline.pipeline import show_progress  # noqa: E402
from vlm.demo_pipeline.profiles import add_profile_arguments, parsed_profile  # noqa: E402
from vlm.demo_pipeline.stages import model_size  # noqa: E402
from vlm.shapes import ANSWER_VOCABULARY  # noqa: E402

ATTRIBUTES = ("colour", "shape", "motion")
logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="a make-shapes corpus (its val split is scored)")
    parser.add_argument("--pretrain-corpus", type=Path, default=None, help="more all-train clips to train on")
    parser.add_argument("--work", required=True, type=Path)
    add_profile_arguments(parser)
    parser.add_argument(
        "--tower",
        choices=("videoprism", "cnn"),
        default="videoprism",
        help="the profile's VideoPrism vision tower, or the small CNN reference",
    )
    parser.add_argument("--train-clips", type=int, default=4000, help="one-object training clips (decoded into memory)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    args.demo_profile = parsed_profile(parser, args)
    return args


def one_object_clips(corpus: Path, split: str):
    """[(video path, {attribute: label index})] of ``split``'s one-object clips (the probes' labels)."""
    from vlm.shapes import probe_labels, read_attributes

    clips = [clip for clip in read_attributes(corpus, split) if clip.count == 1]
    labels = {
        attribute: probe_labels(clips, attribute)[1] for attribute in ATTRIBUTES
    }  # every one-object clip has all three
    return [(corpus / clip.video, {a: int(labels[a][i]) for a in ATTRIBUTES}) for i, clip in enumerate(clips)]


def decode(rows, num_frames: int, size: int):
    """uint8 [N, T, 3, H, W] clips and int64 [N, 3] labels."""
    import numpy as np

    from encoder.video.decode import load_clip

    clips = np.stack(
        [(load_clip(path, num_frames=num_frames, size=size) * 255).round().astype(np.uint8) for path, _ in rows]
    )
    labels = np.array([[row[a] for a in ATTRIBUTES] for _, row in rows], dtype=np.int64)
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).contiguous(), torch.from_numpy(labels)


class VideoPrismEncoder(nn.Module):
    """The VideoPrism vision tower, mean-pooled: pixels [B, T, 3, H, W] in [0, 1] -> [B, D]."""

    def __init__(self, model):
        super().__init__()
        self.model, self.width = model, model.config.hidden_size

    def forward(self, pixels):
        return self.model(pixel_values_videos=pixels).last_hidden_state.mean(1)


class FrameCNN(nn.Module):
    """Four 3x3 conv + batch-norm layers per frame (32-64-128-128 channels, 2x2 max pools after
    the first three), spatial max pool, the T frames' features concatenated in order:
    pixels [B, T, 3, H, W] in [0, 1] -> [B, T * 128]."""

    def __init__(self, num_frames: int):
        super().__init__()
        layers, channels = [], 3
        for index, width in enumerate((32, 64, 128, 128)):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if index < 3 else [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
            channels = width
        self.frames, self.width = nn.Sequential(*layers), num_frames * 128

    def forward(self, pixels):
        batch, frames = pixels.shape[:2]
        # pixels roughly centred and scaled (corpus mean ~0.45, spread ~0.25): the CNN's usual input
        per_frame = self.frames((pixels.flatten(0, 1) - 0.45) / 0.25)  # [B * T, 128]
        return per_frame.view(batch, frames * 128)


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import VideoPrismVisionModel

    from encoder.training.threads import torch_threads

    show_progress(__name__)
    profile = args.demo_profile
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    with torch_threads(args.threads):
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        train_rows = one_object_clips(args.corpus, "train")
        if args.pretrain_corpus is not None:
            train_rows += one_object_clips(args.pretrain_corpus, "train")
        train_rows = train_rows[: args.train_clips]
        train_x, train_y = decode(train_rows, profile.num_frames, profile.frame_size)
        val_x, val_y = decode(one_object_clips(args.corpus, "val"), profile.num_frames, profile.frame_size)
        decoding = time.perf_counter() - start

        if args.tower == "cnn":
            encoder = FrameCNN(profile.num_frames)
        else:
            encoder = VideoPrismEncoder(VideoPrismVisionModel(model_size(profile).vision_config()))
        heads = nn.ModuleList(nn.Linear(encoder.width, len(ANSWER_VOCABULARY[a])) for a in ATTRIBUTES)
        parameters = [*encoder.parameters(), *heads.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)

        def logits(pixels):  # uint8 [B, T, 3, H, W] -> [logits per attribute]
            pooled = encoder(pixels.float() / 255)
            return [head(pooled) for head in heads]

        start = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed)
        for step in range(1, args.steps + 1):
            batch = torch.randint(len(train_x), (args.batch,), generator=generator)
            outputs = logits(train_x[batch])
            loss = sum(nn.functional.cross_entropy(o, train_y[batch, i]) for i, o in enumerate(outputs))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0 or step == args.steps:
                logger.info(f"step {step}: loss {loss.item():.3f}")
        training = time.perf_counter() - start

        encoder.eval()
        with torch.no_grad():
            predicted = [
                torch.cat(parts)
                for parts in zip(
                    *([o.argmax(-1) for o in logits(val_x[i : i + 128])] for i in range(0, len(val_x), 128))
                )
            ]
        result = {
            "tower": args.tower,
            "parameters": sum(p.numel() for p in encoder.parameters()),
            "profile_overrides": args.set,
            "train_clips": len(train_x),
            "val_clips": len(val_x),
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "seconds": {"decode": round(decoding, 1), "train": round(training, 1)},
            "val_accuracy": {a: float((predicted[i] == val_y[:, i]).float().mean()) for i, a in enumerate(ATTRIBUTES)},
        }
    write_json(work / "result.json", result)
    logger.info(f"val accuracy {json.dumps(result['val_accuracy'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
