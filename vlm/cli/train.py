"""``prism-vlm train``: train the glue (a few lines over :func:`vlm.training.loop.train_glue`).

Settings come from ``--config FILE.json`` (a saved ``train_config.json`` works), then the flags given
override them; without ``--config`` the run directory's own ``train_config.json`` is the base when
there is one (resuming is the default; ``--no-resume`` starts a new run). The settings ``prism-vlm
pretrain`` has too have the same flags there (``--checkpoint-every``, ``--resume`` / ``--no-resume``,
``--mixed-precision`` ...), and the same resume rule (``encoder.training.run``). Runs unchanged under
``accelerate launch``.
"""

from __future__ import annotations

import argparse
import json

from encoder.common.cli_arguments import ConfigFlags
from encoder.common.errors import UsageError

DESCRIPTION = """\
Train the resampler with the LM loss (paper defaults: AdamW 0.9/0.999, wd 1e-4, lr 5e-4, linear
warm-up and decay). Settings: --config FILE.json, overridden by flags.

Data sources (--train / --val: JSONL manifests, saved Hugging Face datasets or hf:NAME, PATH:WEIGHT
for the mixture); video paths are relative to the manifest. The task of a source comes from its
columns (or --task):
  captions       {"video": "a.mp4", "caption": "a dog runs" | ["...", ...]}
  QA             {"video": "a.mp4", "question": "what runs?", "answer": "dog"}
  conversations  {"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                                                      {"from": "gpt", "value": "A dog runs."}, ...]}   (LLaVA)
                 {"video": "a.mp4", "messages": [{"role": "user", "content": "What happens?"},
                                                 {"role": "assistant", "content": "A dog runs."}, ...]}
Conversations are rendered with the LLM's chat template exactly as `prism-vlm chat` and the app
render a chat (the video at the start of the first user turn); the loss covers the assistant turns
and their end-of-turn tokens only. Over --max-target-tokens assistant tokens, whole turns are kept
from the start and the rest dropped (counted in data_report.json). Rows with no assistant turn,
roles out of order, a <video> marker after the first turn or empty text are skipped and reported.
"""

# TrainConfig fields with a flag of their own; the data sources and LoRA have the flags below
_NOT_FLAGS = ("train_data", "val_data", "prompts", "lora")
_ALIASES = {
    "learning_rate": "--lr",
    "adam_beta1": "--beta1",
    "adam_beta2": "--beta2",
    "num_frames": "--frames",
    "num_workers": "--workers",
    "cpu_threads": "--threads",
}


def config_flags():
    """The flags generated from :class:`~vlm.training.config.TrainConfig` (one per field)."""
    from vlm.training.config import TrainConfig

    return ConfigFlags(TrainConfig, exclude=_NOT_FLAGS, aliases=_ALIASES)


def _sources(paths, task, columns):
    from vlm.training.config import DataSource

    sources = []
    for path in paths:
        source = DataSource.parse(path)
        source.task = task or source.task
        source.columns = dict(columns)
        DataSource.__post_init__(source)
        sources.append(source)
    return sources


def _columns(pairs) -> dict[str, str]:
    columns = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--column takes KEY=COLUMN (e.g. caption=sentences), got {pair!r}")
        columns[key] = value
    return columns


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of a command line: --config (without it, when resuming, the run directory's saved
    config), then flags."""
    from encoder.training.run import saved_config_path
    from vlm.training.config import TrainConfig

    overrides = config_flags().given(args)
    columns = _columns(args.column)
    if args.train:
        overrides["train_data"] = _sources(args.train, args.task, columns)
    if args.val:
        overrides["val_data"] = _sources(args.val, args.task, columns)
    if args.lora_r is not None:
        overrides["lora"] = {
            "r": args.lora_r,
            "lora_alpha": args.lora_alpha or 2 * args.lora_r,
            "lora_dropout": 0.0,
            "target_modules": args.lora_targets.split(","),
        }
    base = args.config
    output_dir = overrides.get("output_dir")
    if base is None and args.resume and output_dir is not None:
        base = saved_config_path(output_dir)  # continue a run from its own settings
    if base is not None:
        overrides = {
            key: ([s.__dict__ for s in value] if key in ("train_data", "val_data") else value)
            for key, value in overrides.items()
        }
        return TrainConfig.from_json(base, **overrides)
    if "output_dir" not in overrides:
        raise UsageError("give --output-dir (or --config FILE.json)")
    return TrainConfig(**overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from vlm.training.loop import train_glue

    config = config_from_args(args)
    output = train_glue(config, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps({"model": str(output), "run_dir": config.output_dir}))
    return 0


def add_subcommand(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train the glue (Perceiver Resampler) on captions, QA pairs and conversations, "
        "from videos or a feature cache",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[config_flags().parser],
    )
    train.add_argument("--config", default=None, help="TrainConfig JSON (e.g. a run's train_config.json)")
    train.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="continue the newest checkpoint of --output-dir when there is one (the default)",
    )
    train.add_argument(
        "--no-resume",
        "--restart",
        dest="resume",
        action="store_false",
        help="a new run: refused when --output-dir already holds one",
    )
    train.add_argument(
        "--train",
        nargs="+",
        default=None,
        metavar="SRC[:WEIGHT]",
        help="JSONL manifests, saved HF dataset dirs or hf:NAME, with optional mixture weights",
    )
    train.add_argument("--val", nargs="+", default=None, metavar="SRC", help="validation sources")
    train.add_argument(
        "--task",
        choices=["auto", "caption", "qa", "chat"],
        default=None,
        help="task of the sources given (default auto: from the columns)",
    )
    train.add_argument(
        "--column",
        action="append",
        default=None,
        metavar="KEY=COLUMN",
        help="column mapping for the sources given, e.g. --column caption=sentences (repeatable)",
    )
    train.add_argument(
        "--lora-r", type=int, default=None, help="add a LoRA adapter of this rank to the LLM (off by default)"
    )
    train.add_argument("--lora-alpha", type=int, default=None)
    train.add_argument("--lora-targets", default="q_proj,v_proj")
    train.set_defaults(func=_cmd_train)
