"""``prism-vlm pretrain stage1|stage2|lit`` and ``prism-vlm train-tokenizer``.

Each stage's flags are generated from its config dataclass (``encoder.common.cli_arguments.ConfigFlags``,
transformers' ``HfArgumentParser``): one per field, the nested architecture as ``--model-*`` and stage
2's decoder as ``--decoder-*``, plus the short spellings below. A command builds the config (from
``--config FILE.json`` when given, e.g. a run's saved ``train_config.json``, then the flags given) and
calls the stage's ``run_*`` function. The settings ``prism-vlm train`` has too have the same flags
(``--checkpoint-every``, ``--resume`` / ``--no-resume``, ``--mixed-precision`` ...), and the same
resume rule (``encoder.training.run``).
"""

from __future__ import annotations

import argparse

from encoder.common.cli_arguments import ConfigFlags
from encoder.common.errors import UsageError

# Short spellings kept beside the generated --field-name flags.
_COMMON_ALIASES = {
    "output_dir": "--out",
    "train_manifests": "--train",
    "max_steps": "--steps",
    "learning_rate": "--lr",
    "num_frames": "--frames",
    "cpu_threads": "--threads",
    "checkpoint_every": "--save-every",
}
_RENAMED = {"save_every": "checkpoint_every"}  # config keys of runs saved before the names were shared
_MODEL_ALIASES = {
    "hidden_size": "--hidden-size",
    "num_attention_heads": "--heads",
    "intermediate_size": "--mlp-size",
    "num_spatial_layers": "--spatial-layers",
    "num_temporal_layers": "--temporal-layers",
    "num_auxiliary_layers": "--auxiliary-layers",
    "num_frames": "--model-frames",
    "text_layers": "--text-layers",
    "max_text_length": "--max-text-length",
    "patch_size": "--patch-size",
}
_STAGE_ALIASES = {
    "stage1": {"mask_kind": "--mask", "initial_temperature": "--temperature"},
    "stage2": {
        "mask_kind": "--mask",
        "token_loss_weight": "--token-weight",
        "global_loss_weight": "--global-weight",
        "min_learning_rate": "--min-lr",
        "cache_teacher_outputs": "--cache-teacher",
    },
    "lit": {"mask_kind": "--mask", "initial_temperature": "--temperature"},
}
_STAGE_HELP = {
    "stage1": "video-text contrastive training (VideoPrismClipModel)",
    "stage2": "masked video modelling with token shuffling and global-local distillation",
    "lit": "tune the text tower and MAP head against the frozen stage-2 encoder (from a stage-1 model with "
    "--init-from, the paper; without it the text tower, auxiliary layers and MAP head start from scratch)",
}


def _stage_flags(stage: str) -> tuple[ConfigFlags, str, ConfigFlags, type]:
    """A stage's flags, generated from its config dataclass: (its own fields, the nested config's
    field name, the nested config's flags, the nested config's class)."""
    from encoder.videoprism.pretrain.heads import DecoderConfig
    from encoder.videoprism.pretrain.lit import LitConfig
    from encoder.videoprism.pretrain.stage1 import ModelSize, Stage1Config
    from encoder.videoprism.pretrain.stage2 import Stage2Config

    config_class = {"stage1": Stage1Config, "stage2": Stage2Config, "lit": LitConfig}[stage]
    flags = ConfigFlags(
        config_class,
        exclude=("decoder" if stage == "stage2" else "model",),
        aliases={**_COMMON_ALIASES, **_STAGE_ALIASES[stage]},
    )
    if stage == "stage2":
        nested = ConfigFlags(
            DecoderConfig, prefix="decoder_", aliases={"num_layers": "--decoder-layers", "num_heads": "--decoder-heads"}
        )
        return flags, "decoder", nested, DecoderConfig
    return flags, "model", ConfigFlags(ModelSize, prefix="model_", aliases=_MODEL_ALIASES), ModelSize


def config_from_args(cls, args: argparse.Namespace):
    """The stage's config: --config FILE.json (without it, when resuming, the run directory's saved
    config), then the --size preset, then the flags given."""
    from encoder.common.configs import config_from_dict, config_to_dict, read_config_values
    from encoder.training.run import saved_config_path

    flags, nested_name, nested_flags, nested_class = _stage_flags(args.stage)
    given = flags.given(args)
    base = args.config
    if base is None and given.get("output_dir") and given.get("resume", True) and not args.restart:
        base = saved_config_path(given["output_dir"])  # continue a run from its own settings
    values = read_config_values(base) if base else {}
    for old, new in _RENAMED.items():
        if old in values:
            values.setdefault(new, values.pop(old))
    values.update(given)
    preset = getattr(args, "size", None)
    nested = config_to_dict(getattr(nested_class, preset)()) if preset else values.get(nested_name)
    values[nested_name] = {**(nested or config_to_dict(nested_class())), **nested_flags.given(args)}
    if args.restart:
        values["resume"] = False
    if not values.get("output_dir"):
        raise UsageError("give --out DIR (the run directory), or a --config file with output_dir")
    return config_from_dict(cls, values)


def _run(args: argparse.Namespace) -> int:
    if args.stage == "stage1":
        from encoder.videoprism.pretrain.stage1 import Stage1Config, run_stage1

        out = run_stage1(config_from_args(Stage1Config, args))
    elif args.stage == "stage2":
        from encoder.videoprism.pretrain.stage2 import Stage2Config, run_stage2

        out = run_stage2(config_from_args(Stage2Config, args))
    else:
        from encoder.videoprism.pretrain.lit import LitConfig, run_lit

        out = run_lit(config_from_args(LitConfig, args))
    print(f"wrote {out}")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from encoder.videoprism.pretrain.tokenizer import train_caption_tokenizer

    tokenizer = train_caption_tokenizer(args.captions, args.out, vocab_size=args.vocab_size, max_length=args.max_length)
    print(f"wrote {args.out} ({len(tokenizer)} pieces)")
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``pretrain`` (stage1 | stage2 | lit) and ``train-tokenizer``."""
    pretrain = subparsers.add_parser("pretrain", help="two-stage VideoPrism pretraining (stage1, stage2, lit)")
    stages = pretrain.add_subparsers(dest="stage", required=True)
    for stage, text in _STAGE_HELP.items():
        flags, _, nested_flags, _ = _stage_flags(stage)
        command = stages.add_parser(stage, help=text, description=text, parents=[flags.parser, nested_flags.parser])
        command.add_argument(
            "--config", help="start from this JSON config (e.g. a run's train_config.json); flags override it"
        )
        command.add_argument("--restart", action="store_true", help="the same as --no-resume (a new run)")
        if stage == "stage1":
            command.add_argument(
                "--size",
                choices=["base", "tiny"],
                help="architecture preset (default: base); the --model-* flags override it",
            )
        command.set_defaults(func=_run)

    tokenizer = subparsers.add_parser(
        "train-tokenizer", help="train a SentencePiece VideoPrism tokenizer on manifest captions"
    )
    tokenizer.add_argument("--captions", nargs="+", required=True, metavar="MANIFEST")
    tokenizer.add_argument("--out", required=True)
    tokenizer.add_argument("--vocab-size", type=int, default=8000)
    tokenizer.add_argument("--max-length", type=int, default=64)
    tokenizer.set_defaults(func=_train_tokenizer)
