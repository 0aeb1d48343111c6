"""The training loop shared by stage 1, stage 2 and LiT.

A stage is a *task*: an object with a ``model`` (one ``nn.Module`` holding everything trained), a
``loss(model, step, accelerator) -> (loss, metrics)`` method that draws the batch of ``step``
itself (data order, masks and shuffles are pure functions of the seed and the step, so resuming
reproduces them), a ``scheduler(optimizer)`` factory and an ``export(model, out_dir)`` method
writing the final transformers-format model. ``run_training`` does the rest with the shared
machinery: the run harness ``encoder.training.run`` (the accelerator for devices / mixed precision /
processes, the run directory, the resume rule -- the same as glue training's), ``encoder.training.checkpoints``
for atomic checkpoints with optimizer, scheduler, RNG and data position (exact resume),
``encoder.training.run_log`` for the metrics JSONL and loss plot, and a tqdm progress bar.

Run directory (``config.output_dir``; the names glue training uses too)::

    train_config.json    the stage config (a resumed run must match it; runs written before the names
                         were shared have config.json, which resuming reads)
    train_log.txt        resumes and the final model, with times
    checkpoints/step-N/  the newest ``keep_checkpoints`` training checkpoints
    metrics.jsonl        one line per logged step; loss.png its plot
    model/               the exported model, written when training ends (atomically)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from encoder.training.checkpoints import trainable_state, unwrap
from encoder.training.run import MIXED_PRECISIONS, TrainConfigError, TrainingRun, check_run_settings
from encoder.training.run import make_accelerator as _make_accelerator
from encoder.training.steps import run_steps
from encoder.training.threads import torch_threads

OPTIMIZERS = ("adafactor", "adamw")


@dataclass(kw_only=True)
class TrainingSettings:
    """Settings every pretraining stage shares.

    output_dir: run directory (checkpoints, metrics, the exported model under ``model/``).
    train_manifests: JSONL manifests, one dataset each (``encoder.videoprism.pretrain.data``); batches
        alternate between them.
    batch_size: examples per step (split over processes under ``accelerate launch``).
    max_steps: optimizer steps in total (may grow when a run is resumed).
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
    checkpoint_every: checkpoint interval in steps (a checkpoint is also written at the end);
        ``save_every`` is its earlier name, still accepted by the constructor.
    keep_checkpoints: newest checkpoints kept.
    log_every: metrics interval in steps.
    mixed_precision: 'auto', 'no', 'bf16' or 'fp16' (accelerate's autocast; auto: bf16 on a CUDA GPU,
        no on the CPU; fp16 needs CUDA) -- the vocabulary of glue training, checked by
        ``encoder.training.run``.
    cpu: train on the CPU even when CUDA is available.
    cpu_threads: torch CPU threads for the run (None: torch's default). On a CPU shared with other
        jobs, 1 is much faster for small models than oversubscribed threads.
    progress: show a tqdm progress bar.
    resume: True (the default): continue from the newest checkpoint in ``output_dir`` when there is
        one; False: a new run (a directory that holds one is refused). The resume rule is glue
        training's (``encoder.training.run``): every setting but those of ``RESUME_MAY_CHANGE`` must
        match the saved config, and ``max_steps`` may grow.
    report_to: also send the logged metrics to 'tensorboard', 'trackio' or 'wandb' (accelerate's
        trackers; local ones write under ``output_dir/trackers``); 'none' (default): only
        ``metrics.jsonl``, which stays the record either way.

    Every setting is checked when the config is built (TrainConfigError naming it).
    """

    output_dir: str = field(metadata={"help": "run directory (checkpoints, metrics, model/)"})
    train_manifests: list[str] = field(
        default_factory=list,
        metadata={"help": "JSONL manifests, one dataset each (batches alternate)", "metavar": "MANIFEST"},
    )
    batch_size: int = 8
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps in total"})
    learning_rate: float = field(default=1e-2, metadata={"help": "peak learning rate (Adafactor: relative step size)"})
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    optimizer: str = field(default="adafactor", metadata={"choices": OPTIMIZERS})
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip gradients to this norm (default: none)"})
    seed: int = 0
    num_frames: int | None = field(default=None, metadata={"help": "frames per clip (default: the model's)"})
    image_size: int | None = field(default=None, metadata={"help": "clip side in pixels (default: the model's)"})
    cache_clips: bool = field(default=False, metadata={"help": "decode every clip once, keep it in memory"})
    checkpoint_every: int = field(
        default=500, metadata={"help": "checkpoint interval in steps (one is also written at max_steps)"}
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    log_every: int = field(default=10, metadata={"help": "metrics interval in steps"})
    mixed_precision: str = field(
        default="no",
        metadata={
            "choices": MIXED_PRECISIONS,
            "help": "autocast precision (accelerate's names); auto: bf16 on a CUDA GPU, no on the CPU",
        },
    )
    cpu: bool = field(default=False, metadata={"help": "train on the CPU even with CUDA"})
    cpu_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (1 is fastest for small models on a shared CPU)"}
    )
    progress: bool = field(default=True, metadata={"help": "a progress bar (--no-progress: none)"})
    resume: bool = field(
        default=True,
        metadata={
            "help": "continue from the newest checkpoint in the run directory "
            "(the default; --no-resume: a new run, refused where one is)"
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "choices": ("none", "tensorboard", "trackio", "wandb"),
            "help": "also send metrics to this tracker (local ones write to OUT/trackers)",
        },
    )
    save_every: InitVar[int | None] = None  # the earlier name of checkpoint_every

    # The settings a resumed run may change (how it is watched, saved and run, not what it computes;
    # save_every: the earlier name of checkpoint_every, in configs saved as config.json).
    RESUME_MAY_CHANGE = (
        "output_dir",
        "checkpoint_every",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "progress",
        "resume",
        "cache_clips",
        "cpu",
        "cpu_threads",
        "mixed_precision",
        "report_to",
    )

    def __post_init__(self, save_every: int | None = None) -> None:
        if save_every is not None:
            self.checkpoint_every = save_every
        self.check()

    def check(self) -> None:
        """TrainConfigError naming the first setting that cannot work (stages add their own checks)."""
        if isinstance(self.train_manifests, (str, os.PathLike)):
            raise TrainConfigError("train_manifests must be a list of paths")
        if not self.train_manifests:
            raise TrainConfigError("give at least one training manifest (train_manifests)")
        check_run_settings(self)  # the settings glue training has too
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.image_size is not None and not 1 <= int(self.image_size) <= 4096:
            raise TrainConfigError(f"image_size must be in [1, 4096] or None, got {self.image_size}")


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


def make_accelerator(settings: TrainingSettings):
    """The accelerator of ``settings`` (the run harness's ``make_accelerator``)."""
    return _make_accelerator(
        settings.mixed_precision, cpu=settings.cpu, report_to=settings.report_to, run_dir=settings.output_dir
    )


def run_training(
    settings: TrainingSettings, task: Task | Callable[[], Task], title: str, plot_keys: tuple[str, ...] = ("loss",)
) -> Path:
    """Train ``task.model`` for ``settings.max_steps`` steps (resuming from the newest checkpoint by
    the resume rule of ``encoder.training.run``), then export it to ``output_dir/model``. Returns that
    directory.

    task: the Task, or a function building it, called once the run directory has been checked and
    only when there is training to do (a finished run is returned as it is)."""
    with torch_threads(settings.cpu_threads):
        return _train(settings, task, title, plot_keys)


def _train(settings: TrainingSettings, task, title: str, plot_keys: tuple[str, ...]) -> Path:
    settings.check()
    run = TrainingRun(settings, resume=settings.resume, may_change=type(settings).RESUME_MAY_CHANGE, cpu=settings.cpu)
    if run.finished:
        return run.model_dir
    if callable(task) and not hasattr(task, "loss"):
        task = task()
    accelerator = run.accelerator
    model = task.model
    if hasattr(task, "to"):
        task.to(accelerator.device)
    optimizer = make_optimizer(model, settings)
    scheduler = task.scheduler(optimizer)

    start, _ = run.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    run.begin()  # the run directory and its train_config.json
    model, optimizer = accelerator.prepare(model, optimizer)

    metrics = run.start_logging(start)
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
        if run.checkpoint_due(step):
            run.save_checkpoint(
                step,
                model_state=trainable_state(model),
                optimizer=optimizer,
                scheduler=scheduler,
                data_state=task.data_state(step),
                extra={"stage": title},
            )

    try:
        model.train()
        run_steps(
            start=start,
            max_steps=settings.max_steps,
            compute_loss=compute_loss,
            optimizer=optimizer,
            scheduler=scheduler,
            parameters=trainable,
            accelerator=accelerator,
            max_grad_norm=settings.max_grad_norm,
            after_step=after_step,
            title=title,
            progress=settings.progress and accelerator.is_main_process,
            checkpoint_dir=run.run_dir / "checkpoints",
        )
    finally:
        run.close()
    unwrapped = unwrap(model)
    return run.finish(lambda folder: task.export(unwrapped, folder), plot_keys=plot_keys, title=title)


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
