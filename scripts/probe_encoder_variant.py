"""Try an encoder recipe of the demo pipeline and score it by frozen MAP probes on the VAL split.

Trains stage 1 (and, with ``--stage2``, stage 2) exactly as ``scripts/stages.py`` does for the
profile (``--profile``, default ``full``) with ``--set FIELD=VALUE`` overrides, or takes an encoder
that exists (``--encoder DIR``); extracts the train and val tokens (centre crop, the profile's
frames and size) and trains one MAP probe per attribute (colour and shape on one-object clips,
motion on all) on train, scored on **val** -- so recipe choices never look at the test split.

Writes WORK/result.json: wall-clock per stage, and per encoder the accuracy and the per-class
accuracy of each attribute. For a stage-1 model (it has a text tower) it also scores, on the first
``--negatives-clips`` clips of train AND val, how often the whole video-text model prefers a clip's
caption to each of its hard negatives (``vlm.shapes.hard_negative_captions``: shape swapped,
opposite motion, other motion; chance 0.5): a train score far above the val one means stage 1
memorised its training clips instead of learning the attribute.

    python scripts/probe_encoder_variant.py --corpus runs/demo-full/corpus --work runs/variants/s3500 \\
        --set stage1_steps=3500 --threads 1
    python scripts/probe_encoder_variant.py --corpus runs/demo-full/corpus --work runs/variants/shipped \\
        --encoder runs/demo-full/stage1/model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's vlm and encoder

from encoder.common.atomic_files import write_json  # noqa: E402
from encoder.common.jsonl import iter_jsonl_strict  # noqa: E402
from vlm.demo_pipeline import stages  # noqa: E402  (the pipeline's own stage functions)
from vlm.demo_pipeline.pipeline import show_progress  # noqa: E402
from vlm.demo_pipeline.profiles import add_profile_arguments, parsed_profile  # noqa: E402
from vlm.demo_pipeline.workdir import read_json  # noqa: E402

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="a make-shapes corpus (train and val splits)")
    parser.add_argument("--work", required=True, type=Path, help="output folder (stages found there are reused)")
    add_profile_arguments(parser)
    parser.add_argument("--encoder", type=Path, default=None, help="probe this stage-1 encoder instead of training one")
    parser.add_argument(
        "--stage2", action="store_true", help="also train stage 2 from the stage-1 encoder and probe it"
    )
    parser.add_argument("--probe-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="pretraining and probe seed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--negatives-clips",
        type=int,
        default=320,
        help="clips per split for the caption-vs-hard-negatives score (0: skip it)",
    )
    args = parser.parse_args(argv)
    args.demo_profile = parsed_profile(parser, args)
    return args


def caption_vs_negatives(
    model_dir: Path,
    corpus: Path,
    split: str,
    num_clips: int,
    num_frames: int,
    size: int,
    seed: int,
    batch_size: int = 64,
) -> dict:
    """Share of ``split``'s first ``num_clips`` clips whose caption (phrasing ``i % n`` of clip i) the
    stage-1 video-text model scores above each of its hard negatives:
    {"shape": a, "opposite_motion": b, "other_motion": c, "clips": n}."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, VideoPrismClipModel

    from encoder.video.decode import load_clip
    from encoder.videoprism.pretrain.stage1 import ContrastiveModel, load_logit_scale
    from encoder.videoprism.text_tokenizer import tokenize_texts
    from vlm.shapes import read_attributes

    clip_model = VideoPrismClipModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = ContrastiveModel(clip_model, load_logit_scale(model_dir)).eval()
    max_length = clip_model.config.text_config.max_position_embeddings
    heldout = stages.corpus_heldout_pairs(corpus)
    attributes = {clip.id: clip for clip in read_attributes(corpus, split)}
    rows = [row for _, row in iter_jsonl_strict(corpus / split / "captions.jsonl")]
    rows = rows[:num_clips]
    patches = (size // clip_model.config.vision_config.tubelet_size[1]) ** 2
    wins = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pixels = torch.from_numpy(
            np.stack([load_clip(corpus / split / row["video"], num_frames=num_frames, size=size) for row in chunk])
        ).permute(0, 1, 4, 2, 3)
        texts = []
        for number, row in enumerate(chunk, start):
            caption, negatives = stages.caption_and_negatives(row, number, attributes[row["id"]], heldout, seed)
            texts += [caption, *negatives]
        input_ids, attention_mask = tokenize_texts(tokenizer, texts, max_length=max_length)
        with torch.no_grad():
            video, text, _ = model(pixels, torch.arange(patches).repeat(len(chunk), 1), input_ids, attention_mask)
        similarity = (video[:, None] * text.view(len(chunk), 4, -1)).sum(-1)  # [B, caption + 3 negatives]
        wins.append((similarity[:, :1] > similarity[:, 1:]).float().numpy())
    won = np.concatenate(wins).mean(axis=0)
    return {"shape": float(won[0]), "opposite_motion": float(won[1]), "other_motion": float(won[2]), "clips": len(rows)}


def probe_on_val(corpus: Path, cache_dir: Path, epochs: int, seed: int) -> dict:
    """{attribute: accuracy, attribute_per_class: {class: accuracy}} of MAP probes trained on train, scored on val."""
    from encoder.videoprism.features import FeatureCache
    from encoder.videoprism.probe import ProbeConfig, cached_tokens, probe_predictions, train_map_probe
    from vlm.shapes import probe_labels, read_attributes

    clips = {split: read_attributes(corpus, split) for split in ("train", "val")}
    cache = FeatureCache(cache_dir)
    by_path = {str(Path(video).resolve()): video for video in cache.videos}
    tokens = {
        split: cached_tokens(cache, [by_path[str((corpus / clip.video).resolve())] for clip in clips[split]])
        for split in clips
    }
    result = {}
    for attribute in ("colour", "shape", "motion"):
        (train_rows, train_labels, classes), (val_rows, val_labels, _) = (
            probe_labels(clips["train"], attribute),
            probe_labels(clips["val"], attribute),
        )
        probe = train_map_probe(
            tokens["train"][train_rows], train_labels, len(classes), ProbeConfig(epochs=epochs), seed=seed
        )
        predicted = probe_predictions(probe, tokens["val"][val_rows]).numpy()
        result[attribute] = float((predicted == val_labels).mean())
        result[f"{attribute}_per_class"] = {
            name: float((predicted[val_labels == i] == i).mean())
            for i, name in enumerate(classes)
            if (val_labels == i).any()
        }
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from encoder.training.threads import torch_threads

    show_progress(__name__)
    profile = args.demo_profile
    work, corpus = args.work.resolve(), args.corpus.resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "profile.json", dataclasses.asdict(profile))
    result: dict = {
        "profile_overrides": args.set,
        "encoder": str(args.encoder) if args.encoder else None,
        "threads": args.threads or torch.get_num_threads(),
        "seconds": {},
    }
    with torch_threads(args.threads):
        if args.encoder is None or args.stage2:  # something to pretrain
            pretrain_corpus = stages.make_pretraining_corpus(work, profile, corpus)
            stage1_manifest, stage2_manifest = stages.pretraining_manifests(
                work, [corpus, pretrain_corpus] if pretrain_corpus else [corpus], args.seed
            )
        start = time.perf_counter()
        encoders = {
            "stage1": args.encoder.resolve()
            if args.encoder
            else stages.run_stage1_training(work, profile, args.seed, stage1_manifest)
        }
        result["seconds"]["stage1"] = round(time.perf_counter() - start, 1)
        if args.stage2:
            start = time.perf_counter()
            encoders["stage2"] = stages.run_stage2_training(
                work, profile, args.seed, stage2_manifest, encoders["stage1"], None
            )
            result["seconds"]["stage2"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        caches = stages.extract_all_features(work, profile, corpus, encoders, splits=("train", "val"))
        result["seconds"]["features"] = round(time.perf_counter() - start, 1)
        for name, cache_dir in caches.items():
            start = time.perf_counter()
            result[name] = probe_on_val(corpus, cache_dir, args.probe_epochs, args.seed)
            result["seconds"][f"probes_{name}"] = round(time.perf_counter() - start, 1)
            write_json(work / "result.json", result)
            summary = {k: round(v, 3) for k, v in result[name].items() if not k.endswith("_per_class")}
            logger.info(f"{name}: val probe accuracy {json.dumps(summary)}")
        stage1_dir = Path(encoders["stage1"])
        if args.negatives_clips and "text_config" in read_json(stage1_dir / "config.json", {}):
            start = time.perf_counter()
            result["stage1"]["caption_vs_negatives"] = {
                split: caption_vs_negatives(
                    stage1_dir, corpus, split, args.negatives_clips, profile.num_frames, profile.frame_size, args.seed
                )
                for split in ("train", "val")
            }
            result["seconds"]["caption_vs_negatives"] = round(time.perf_counter() - start, 1)
            write_json(work / "result.json", result)
            logger.info(
                f"stage1: caption preferred to its hard negatives {json.dumps(result['stage1']['caption_vs_negatives'])}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
