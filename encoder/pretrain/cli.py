"""``prism-vlm pretrain stage1|stage2|lit`` and ``prism-vlm train-tokenizer``.

Each command builds the stage's config dataclass (from ``--config FILE.json`` when given, e.g. a
run's saved ``config.json``, then the flags given on the command line) and calls its ``run_*``
function. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from encoder.cli_arguments import FRAMES, POSITIVE

# flag destination -> config field (shared by all stages)
_COMMON = {
    "train": "train_manifests",
    "batch_size": "batch_size",
    "steps": "max_steps",
    "lr": "learning_rate",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "optimizer": "optimizer",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "frames": "num_frames",
    "image_size": "image_size",
    "cache_clips": "cache_clips",
    "save_every": "save_every",
    "keep_checkpoints": "keep_checkpoints",
    "log_every": "log_every",
    "mixed_precision": "mixed_precision",
    "cpu": "cpu",
    "threads": "cpu_threads",
    "report_to": "report_to",
}
_MODEL_SIZE = {
    "hidden_size": "hidden_size",
    "heads": "num_attention_heads",
    "mlp_size": "intermediate_size",
    "spatial_layers": "num_spatial_layers",
    "temporal_layers": "num_temporal_layers",
    "auxiliary_layers": "num_auxiliary_layers",
    "model_frames": "num_frames",
    "model_image_size": "image_size",
    "patch_size": "patch_size",
    "text_layers": "text_layers",
    "max_text_length": "max_text_length",
}
_LIT_TEXT = {"auxiliary_layers": "num_auxiliary_layers", "text_layers": "text_layers", "max_text_length": "max_text_length"}
_DECODER = {"decoder_width": "width", "decoder_layers": "num_layers", "decoder_heads": "num_heads"}


def _add_common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", required=True, help="run directory (checkpoints, metrics, model/)")
    command.add_argument("--train", nargs="+", metavar="MANIFEST", help="JSONL manifests, one dataset each (batches alternate)")
    command.add_argument("--config", help="start from this JSON config (e.g. a run's config.json); flags override it")
    command.add_argument("--batch-size", type=POSITIVE)
    command.add_argument("--steps", type=int, help="optimizer steps in total")
    command.add_argument("--lr", type=float, help="peak learning rate (Adafactor: relative step size)")
    command.add_argument("--warmup-steps", type=int)
    command.add_argument("--weight-decay", type=float)
    command.add_argument("--optimizer", choices=["adafactor", "adamw"])
    command.add_argument("--max-grad-norm", type=float)
    command.add_argument("--seed", type=int)
    command.add_argument("--frames", type=FRAMES, help="frames per clip (default: the model's)")
    command.add_argument("--image-size", type=int, help="clip side in pixels (default: the model's)")
    command.add_argument("--cache-clips", action="store_true", default=None, help="decode every clip once, keep it in memory")
    command.add_argument("--save-every", type=int)
    command.add_argument("--keep-checkpoints", type=int)
    command.add_argument("--log-every", type=int)
    command.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    command.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even with CUDA")
    command.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest for small models on a shared CPU)")
    command.add_argument("--report-to", choices=["none", "tensorboard", "trackio", "wandb"],
                         help="also send metrics to this tracker (local ones write to OUT/trackers; default none)")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.add_argument("--restart", action="store_true", help="ignore existing checkpoints in --out")


def _build_config(cls, args: argparse.Namespace, mapping: dict[str, str], nested: dict[str, tuple[str, dict, type]] | None = None):
    from encoder.pretrain.training import config_from_dict, config_to_dict

    values: dict = {}
    if args.config:
        values = json.loads(Path(args.config).read_text(encoding="utf-8"))
    values["output_dir"] = args.out
    for flag, name in {**_COMMON, **mapping}.items():
        value = getattr(args, flag, None)
        if value is not None:
            values[name] = value
    for field_name, (preset, flags, nested_cls) in (nested or {}).items():
        base = values.get(field_name)
        if preset is not None:
            base = config_to_dict(getattr(nested_cls, preset)())
        base = dict(base or config_to_dict(nested_cls()))
        for flag, name in flags.items():
            value = getattr(args, flag, None)
            if value is not None:
                base[name] = value
        values[field_name] = base
    if args.no_progress:
        values["progress"] = False
    if args.restart:
        values["resume"] = False
    return config_from_dict(cls, values)


def _run(args: argparse.Namespace) -> int:
    from encoder.pretrain.heads import DecoderConfig
    from encoder.pretrain.stage1 import ModelSize

    if args.stage == "stage1":
        from encoder.pretrain.stage1 import Stage1Config, run_stage1

        config = _build_config(
            Stage1Config, args,
            {"tokenizer": "tokenizer", "vocab_size": "vocab_size", "init_from": "init_from",
             "init_encoder_from": "init_encoder_from", "drop_ratio": "drop_ratio", "mask": "mask_kind",
             "temperature": "initial_temperature", "hard_negatives": "hard_negatives"},
            {"model": (args.size, _MODEL_SIZE, ModelSize)},
        )
        out = run_stage1(config)
    elif args.stage == "stage2":
        from encoder.pretrain.stage2 import Stage2Config, run_stage2

        config = _build_config(
            Stage2Config, args,
            {"teacher": "teacher", "mask": "mask_kind", "mask_ratio": "mask_ratio", "token_weight": "token_loss_weight",
             "global_weight": "global_loss_weight", "min_lr": "min_learning_rate", "cache_teacher": "cache_teacher_outputs"},
            {"decoder": (None, _DECODER, DecoderConfig)},
        )
        if args.no_shuffle:
            config = dataclasses.replace(config, shuffle_tokens=False)
        if args.no_global:
            config = dataclasses.replace(config, global_distillation=False)
        out = run_stage2(config)
    else:
        from encoder.pretrain.lit import LitConfig, run_lit

        config = _build_config(
            LitConfig, args,
            {"encoder": "encoder", "init_from": "init_from", "drop_ratio": "drop_ratio", "mask": "mask_kind",
             "cache_encoder_tokens": "cache_encoder_tokens", "tokenizer": "tokenizer", "vocab_size": "vocab_size",
             "temperature": "initial_temperature"},
            {"model": (None, _LIT_TEXT, ModelSize)},
        )
        out = run_lit(config)
    print(f"wrote {out}")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from encoder.pretrain.tokenizer import train_caption_tokenizer

    tokenizer = train_caption_tokenizer(args.captions, args.out, vocab_size=args.vocab_size, max_length=args.max_length)
    print(f"wrote {args.out} ({len(tokenizer)} pieces)")
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``pretrain`` (stage1 | stage2 | lit) and ``train-tokenizer``."""
    pretrain = subparsers.add_parser("pretrain", help="two-stage VideoPrism pretraining (stage1, stage2, lit)")
    stages = pretrain.add_subparsers(dest="stage", required=True)

    stage1 = stages.add_parser("stage1", help="video-text contrastive training (VideoPrismClipModel)")
    _add_common(stage1)
    stage1.add_argument("--size", choices=["base", "tiny"], help="architecture preset (default: base); flags below override it")
    for flag, kind in (("--hidden-size", int), ("--heads", int), ("--mlp-size", int), ("--spatial-layers", int),
                       ("--temporal-layers", int), ("--auxiliary-layers", int), ("--model-frames", int),
                       ("--model-image-size", int), ("--patch-size", int), ("--text-layers", int), ("--max-text-length", int)):
        stage1.add_argument(flag, type=kind)
    stage1.add_argument("--tokenizer", help="VideoPrism tokenizer directory or SentencePiece .model (default: train one)")
    stage1.add_argument("--vocab-size", type=int, help="pieces of the tokenizer trained when --tokenizer is not given")
    stage1.add_argument("--init-from", help="continue from a VideoPrismClipModel directory")
    stage1.add_argument("--init-encoder-from", help="initialise the video encoder (directory, Hub id or official .npz)")
    stage1.add_argument("--drop-ratio", type=float, help="fraction of video tokens dropped (default 0.5)")
    stage1.add_argument("--mask", choices=["tube", "block"], help="how tokens are dropped (default tube)")
    stage1.add_argument("--temperature", type=float, help="initial softmax temperature (learned; default 0.07)")
    stage1.add_argument("--hard-negatives", type=int,
                        help="per video and step, this many of its manifest row's negative_captions join its "
                        "video->text candidates (NegCLIP-style; default 0, as in the paper)")
    stage1.set_defaults(func=_run)

    stage2 = stages.add_parser("stage2", help="masked video modelling with token shuffling and global-local distillation")
    _add_common(stage2)
    stage2.add_argument("--teacher", help="stage-1 model directory (required unless in --config)")
    stage2.add_argument("--mask", choices=["block", "tube"], help="BEVT block (default) or tube masking")
    stage2.add_argument("--mask-ratio", type=float, help="default 0.65")
    stage2.add_argument("--no-shuffle", action="store_true", help="ablation: no token shuffling")
    stage2.add_argument("--no-global", action="store_true", help="ablation: no global distillation")
    stage2.add_argument("--token-weight", type=float)
    stage2.add_argument("--global-weight", type=float)
    stage2.add_argument("--decoder-width", type=int)
    stage2.add_argument("--decoder-layers", type=int)
    stage2.add_argument("--decoder-heads", type=int)
    stage2.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay (default 1e-5)")
    stage2.add_argument("--cache-teacher", action="store_true", default=None, help="keep teacher outputs per clip in memory")
    stage2.set_defaults(func=_run)

    lit = stages.add_parser("lit", help="tune the text tower and MAP head against the frozen stage-2 encoder")
    _add_common(lit)
    lit.add_argument("--encoder", help="the frozen encoder: stage-2 directory, Hub id or .npz (required unless in --config)")
    lit.add_argument("--init-from", help="stage-1 model directory (the paper); without it the text tower, auxiliary "
                     "layers and MAP head start from scratch (sizes below) and a tokenizer is trained on the captions")
    lit.add_argument("--tokenizer", help="without --init-from: VideoPrism tokenizer directory or SentencePiece .model")
    lit.add_argument("--vocab-size", type=int, help="without --init-from and --tokenizer: pieces of the trained tokenizer")
    lit.add_argument("--text-layers", type=int, help="without --init-from: text tower depth (default 12)")
    lit.add_argument("--auxiliary-layers", type=int, help="without --init-from: auxiliary layers (default 2)")
    lit.add_argument("--max-text-length", type=int, help="without --init-from: text tokens (default 64)")
    lit.add_argument("--temperature", type=float, help="without --init-from: initial temperature (learned; default 0.07)")
    lit.add_argument("--drop-ratio", type=float)
    lit.add_argument("--mask", choices=["tube", "block"])
    lit.add_argument("--cache-encoder-tokens", action="store_true", default=None)
    lit.set_defaults(func=_run)

    tokenizer = subparsers.add_parser("train-tokenizer", help="train a SentencePiece VideoPrism tokenizer on manifest captions")
    tokenizer.add_argument("--captions", nargs="+", required=True, metavar="MANIFEST")
    tokenizer.add_argument("--out", required=True)
    tokenizer.add_argument("--vocab-size", type=int, default=8000)
    tokenizer.add_argument("--max-length", type=int, default=64)
    tokenizer.set_defaults(func=_train_tokenizer)
