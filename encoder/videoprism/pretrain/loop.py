"""The training loop shared by stage 1, stage 2 and LiT.

A stage is a *task*: an object with a ``model`` (one ``nn.Module`` holding everything trained), a
``loss(model, step, accelerator) -> (loss, metrics)`` method that draws the batch of ``step``
itself (data order, masks and shuffles are pure functions of the seed and the step, so resuming
reproduces them), a ``scheduler(optimizer)`` factory and an ``export(model, out_dir)`` method
writing the final transformers-format model. ``run_training`` does the rest with the shared
machinery: accelerate for devices / mixed precision / processes, ``encoder.training.checkpoints`` for atomic
checkpoints with optimizer, scheduler, RNG and data position (exact resume), ``encoder.training.run_log``
for the metrics JSONL and loss plot, and a tqdm progress bar.

Run directory (``config.output_dir``)::

    config.json          the stage config (a resumed run must match it)
    checkpoints/step-N/  the newest ``keep_checkpoints`` training checkpoints
    metrics.jsonl        one line per logged step; loss.png its plot
    model/               the exported model, written when training ends (atomically)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from encoder.common.atomic_files import save_directory_atomically
from encoder.common.configs import config_to_dict, save_config
from encoder.training.checkpoints import (
    latest_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
    trainable_state,
    unwrap,
)
from encoder.training.run_log import (
    MetricsLog,
    check_report_to,
    finish_trackers,
    plot_metrics_if_installed,
    start_trackers,
)
from encoder.training.steps import run_steps
from encoder.training.threads import torch_threads

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
MODEL_DIR = "model"
OPTIMIZERS = ("adafactor", "adamw")
# Fields that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_FIELDS = {
    "save_every", "keep_checkpoints", "log_every", "progress", "resume", "cache_clips", "cpu", "max_steps", "cpu_threads",
}


@dataclass(kw_only=True)
class TrainingSettings:
    """Settings every pretraining stage shares.

    output_dir: run directory (checkpoints, metrics, the exported model under ``model/``).
    train_manifests: JSONL manifests, one dataset each (``encoder.videoprism.pretrain.data``); batches
        alternate between them.
    batch_size: examples per step (split over processes under ``accelerate launch``).
    max_steps: optimizer steps in total.
    learning_rate: peak learning rate. With Adafactor (torch's, relative step sizes) an update
        moves each tensor by about ``lr * RMS(tensor)``, so the value is relative, not the paper's
        absolute one (5e-4 there for weights of RMS ~0.05 corresponds to about 1e-2 here).
    warmup_steps: linear warm-up steps.
    weight_decay: decoupled weight decay (torch Adafactor/AdamW: ``p *= 1 - lr * wd``).
    optimizer: 'adafactor' (the paper's) or 'adamw'.
    max_grad_norm: clip gradients to this norm (None: no clipping; Adafactor clips its updates).
    seed: seeds model initialisation, data order, masks and shuffles.
    num_frames, image_size: clip shape fed to the model (None: the model's own).
    cache_clips: decode each clip once and keep it in memory (uint8).
    save_every: checkpoint interval in steps (a checkpoint is also written at the end).
    keep_checkpoints: newest checkpoints kept.
    log_every: metrics interval in steps.
    mixed_precision: 'no', 'bf16' or 'fp16' (accelerate autocast).
    cpu: train on the CPU even when CUDA is available.
    cpu_threads: torch CPU threads for the run (None: torch's default). On a CPU shared with other
        jobs, 1 is much faster for small models than oversubscribed threads.
    progress: show a tqdm progress bar.
    resume: continue from the newest checkpoint in ``output_dir`` when there is one.
    report_to: also send the logged metrics to 'tensorboard', 'trackio' or 'wandb' (accelerate's
        trackers; local ones write under ``output_dir/trackers``); 'none' (default): only
        ``metrics.jsonl``, which stays the record either way.
    """

    output_dir: str = field(metadata={"help": 'run directory (checkpoints, metrics, model/)'})
    train_manifests: list[str] = field(default_factory=list, metadata={"help": 'JSONL manifests, one dataset each (batches alternate)', "metavar": 'MANIFEST'})
    batch_size: int = 8
    max_steps: int = field(default=1000, metadata={"help": 'optimizer steps in total'})
    learning_rate: float = field(default=1e-2, metadata={"help": 'peak learning rate (Adafactor: relative step size)'})
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    optimizer: str = field(default="adafactor", metadata={"choices": ('adafactor', 'adamw')})
    max_grad_norm: float | None = field(default=None, metadata={"help": 'clip gradients to this norm (default: none)'})
    seed: int = 0
    num_frames: int | None = field(default=None, metadata={"help": "frames per clip (default: the model's)"})
    image_size: int | None = field(default=None, metadata={"help": "clip side in pixels (default: the model's)"})
    cache_clips: bool = field(default=False, metadata={"help": 'decode every clip once, keep it in memory'})
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    mixed_precision: str = field(default="no", metadata={"choices": ('no', 'bf16', 'fp16')})
    cpu: bool = field(default=False, metadata={"help": 'train on the CPU even with CUDA'})
    cpu_threads: int | None = field(default=None, metadata={"help": 'torch CPU threads (1 is fastest for small models on a shared CPU)'})
    progress: bool = field(default=True, metadata={"help": 'a progress bar (--no-progress: none)'})
    resume: bool = field(default=True, metadata={"help": 'continue from the newest checkpoint in the run directory (--no-resume: start over)'})
    report_to: str = field(default="none", metadata={"choices": ('none', 'tensorboard', 'trackio', 'wandb'), "help": 'also send metrics to this tracker (local ones write to OUT/trackers)'})

    def check(self) -> None:
        if not self.output_dir:
            raise ValueError("output_dir is required")
        if not self.train_manifests:
            raise ValueError("give at least one training manifest (train_manifests)")
        if isinstance(self.train_manifests, (str, os.PathLike)):
            raise ValueError("train_manifests must be a list of paths")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.save_every < 1 or self.log_every < 1:
            raise ValueError("max_steps, batch_size, save_every and log_every must be >= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        for name in ("num_frames", "image_size"):
            value = getattr(self, name)
            if value is not None and not 1 <= int(value) <= 4096:
                raise ValueError(f"{name} must be in [1, 4096] or None, got {value}")
        from encoder.training.run_log import REPORT_TO

        if self.report_to not in REPORT_TO:
            raise ValueError(f"report_to must be one of {REPORT_TO}, got {self.report_to!r}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps], got {self.warmup_steps}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")


# ---------------------------------------------------------------------------------------------
# Config <-> JSON
# ---------------------------------------------------------------------------------------------


def _check_same_run(config: Any, saved_path: Path) -> None:
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    current = config_to_dict(config)
    changed = sorted(k for k in set(saved) | set(current) if k not in RESUMABLE_FIELDS and saved.get(k) != current.get(k))
    if changed:
        raise ValueError(
            f"{saved_path.parent} holds checkpoints of a run with a different config (fields {changed}); "
            "use another output_dir, or resume=False to start over"
        )


# ---------------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    """Adafactor (torch >= 2.5) or AdamW over the parameters that require grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if settings.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


class Task(Protocol):
    model: nn.Module

    def loss(self, model: nn.Module, step: int, accelerator) -> tuple[torch.Tensor, dict[str, float]]: ...

    def scheduler(self, optimizer: torch.optim.Optimizer): ...

    def export(self, model: nn.Module, out_dir: Path) -> None: ...

    def data_state(self, step: int) -> dict: ...


def _export_atomically(task: Task, model: nn.Module, out_dir: Path) -> Path:
    def export(folder: Path) -> None:
        folder.mkdir(parents=True)
        task.export(model, folder)

    return save_directory_atomically(out_dir, export)


def make_accelerator(settings: TrainingSettings):
    from accelerate import Accelerator

    from encoder.training.run_log import TRACKERS_DIR, check_report_to

    tracker = check_report_to(settings.report_to)
    return Accelerator(mixed_precision=settings.mixed_precision, cpu=settings.cpu, log_with=tracker,
                       project_dir=str(Path(settings.output_dir) / TRACKERS_DIR) if tracker else None)


def run_training(settings: TrainingSettings, task: Task, title: str, plot_keys: tuple[str, ...] = ("loss",)) -> Path:
    """Train ``task.model`` for ``settings.max_steps`` steps (resuming from the newest checkpoint),
    then export it to ``output_dir/model``. Returns that directory."""
    with torch_threads(settings.cpu_threads):
        return _train(settings, task, title, plot_keys)


def _train(settings: TrainingSettings, task: Task, title: str, plot_keys: tuple[str, ...]) -> Path:
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(settings)
    model = task.model
    if hasattr(task, "to"):
        task.to(accelerator.device)
    optimizer = make_optimizer(model, settings)
    scheduler = task.scheduler(optimizer)

    start = 0
    checkpoint = latest_checkpoint(out) if settings.resume else None
    if checkpoint is not None:
        if (out / CONFIG_FILE).is_file():
            _check_same_run(settings, out / CONFIG_FILE)
        start, _, _ = load_training_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
    if accelerator.is_main_process:
        save_config(settings, out / CONFIG_FILE)
    model, optimizer = accelerator.prepare(model, optimizer)

    start_trackers(accelerator, check_report_to(settings.report_to), out, config_to_dict(settings))
    metrics = MetricsLog(out / METRICS_FILE, resume_step=start, accelerator=accelerator) if accelerator.is_main_process else None
    trainable = [p for p in unwrap(model).parameters() if p.requires_grad]
    began = [0.0]

    def compute_loss(step: int) -> tuple[float, dict]:
        began[0] = time.perf_counter()
        loss, values = task.loss(model, step - 1, accelerator)  # the task's steps count from 0
        accelerator.backward(loss)
        return float(loss.detach()), values

    def after_step(step: int, loss: float, learning_rate: float, values: dict) -> None:
        seconds = time.perf_counter() - began[0]
        if metrics is not None and (step % settings.log_every == 0 or step == settings.max_steps or step == 1):
            metrics.log(step, loss=loss, lr=float(learning_rate), step_seconds=round(seconds, 4), **values)
        if step % settings.save_every == 0 or step == settings.max_steps:
            save_training_checkpoint(
                out, step, model_state=trainable_state(model), optimizer=optimizer, scheduler=scheduler,
                data_state=task.data_state(step), extra={"stage": title}, keep_last=settings.keep_checkpoints,
            )

    try:
        model.train()
        run_steps(start=start, max_steps=settings.max_steps, compute_loss=compute_loss, optimizer=optimizer,
                  scheduler=scheduler, parameters=trainable, accelerator=accelerator, max_grad_norm=settings.max_grad_norm,
                  after_step=after_step, title=title, progress=settings.progress and accelerator.is_main_process,
                  checkpoint_dir=out / "checkpoints")
    finally:
        if metrics is not None:
            metrics.close()
        finish_trackers(accelerator)
    accelerator.wait_for_everyone()
    final = out / MODEL_DIR
    if accelerator.is_main_process:
        _export_atomically(task, unwrap(model), final)
        plot_metrics_if_installed(out / METRICS_FILE, out / PLOT_FILE, keys=plot_keys, title=title)
    accelerator.wait_for_everyone()
    return final


def process_rows(rows, accelerator) -> list[int]:
    """This process's share of a step's global batch (every ``num_processes``-th row)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [int(r) for r in rows]
    share = [int(r) for r in rows[accelerator.process_index :: accelerator.num_processes]]
    if not share:
        raise ValueError(f"batch of {len(rows)} is smaller than the {accelerator.num_processes} processes")
    return share


def step_seed(seed: int, stream: int, step: int, process: int = 0) -> list[int]:
    """Seed material for one kind of random draw (``stream``) of one step on one process
    (``numpy.random.default_rng`` accepts it)."""
    return [int(seed), int(stream), int(step), int(process)]


def torch_generator(seed: int, stream: int, step: int, process: int = 0) -> torch.Generator:
    """A CPU torch generator seeded from (seed, stream, step, process)."""
    material = np.random.SeedSequence(step_seed(seed, stream, step, process)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(material[0]) << 31 | int(material[1]) >> 1)
