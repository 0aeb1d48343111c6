"""A training run's directory, accelerator and resume rule: the one harness of glue training
(``vlm.training.loop``) and of the pretraining stages (``encoder.videoprism.pretrain.loop``).

:class:`TrainingRun` is the only place that builds the ``accelerate.Accelerator`` of a training and
that checks and creates a run directory; :func:`check_run_settings` checks the settings every
training has. Both trainings write the same names::

    train_config.json     the run's config (``--config`` reads it back; a resumed run is checked against it)
    train_log.txt         notes with a time: what was resumed from where, where the model went
    metrics.jsonl         one JSON object per logged step (``encoder.training.run_log``)
    loss.png              its plot, drawn when the run ends
    checkpoints/step-N/   the newest ``keep_checkpoints`` checkpoints (``encoder.training.checkpoints``)
    trackers/             TensorBoard / Trackio files when ``report_to`` names one
    model/                the final model, written atomically when the run ends

The resume rule (``resume=True`` is the default of both trainings):

- ``resume=True``: continue from the newest checkpoint of the run directory (model, optimizer,
  schedule, RNG and data position), or start at step 0 when there is none. Every setting must equal
  the one in the run's saved config except those of the config class's ``RESUME_MAY_CHANGE`` (how
  the run is watched, saved and spread over devices, not what it computes) and ``max_steps``, which
  may grow (extending a run, finished or not: the learning-rate schedule follows the new length from
  the first step after the checkpoint, see :func:`follow_schedule`) but not shrink. A run whose checkpoint has reached ``max_steps`` and whose model is
  written is finished: running it again does nothing.
- ``resume=False``: a new run; a directory that already holds checkpoints or a final model is refused.

Every refusal, like every bad setting, is a :class:`TrainConfigError` naming the settings. Pretraining
runs written before the names were shared saved their config as ``config.json``; resuming reads it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from encoder.common.configs import config_to_dict, read_config_values, save_config
from encoder.common.errors import PrismVlmError

CONFIG_FILE = "train_config.json"
LEGACY_CONFIG_FILE = "config.json"  # pretraining runs written before both trainings shared these names
LOG_FILE = "train_log.txt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
MODEL_DIR = "model"
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")  # accelerate's names; auto: bf16 on a CUDA GPU that has it, else no
MAX_FRAMES = 4096


class TrainConfigError(PrismVlmError, ValueError):
    """A training setting that cannot work, or that differs from the run being resumed (the message
    names the settings and the reason)."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def check_mixed_precision(value: str) -> str:
    """``value`` when it is one of :data:`MIXED_PRECISIONS`; TrainConfigError otherwise."""
    if value not in MIXED_PRECISIONS:
        raise TrainConfigError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {value!r}")
    return value


def check_run_settings(config: Any) -> None:
    """Check the settings every training config has (TrainConfigError naming the first bad one):
    output_dir, max_steps, batch_size, checkpoint_every, log_every, keep_checkpoints, warmup_steps,
    learning_rate, max_grad_norm, cpu_threads, num_frames, mixed_precision and report_to."""
    from encoder.training.run_log import REPORT_TO

    if not config.output_dir:
        raise TrainConfigError("output_dir is required")
    for name in ("max_steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
        if int(getattr(config, name)) < 1:
            raise TrainConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.warmup_steps <= config.max_steps:
        raise TrainConfigError(f"warmup_steps must be in [0, max_steps={config.max_steps}], got {config.warmup_steps}")
    if not config.learning_rate > 0:
        raise TrainConfigError(f"learning_rate must be > 0, got {config.learning_rate}")
    if config.max_grad_norm is not None and config.max_grad_norm <= 0:
        raise TrainConfigError(f"max_grad_norm must be > 0 or None, got {config.max_grad_norm}")
    if config.cpu_threads is not None and config.cpu_threads < 1:
        raise TrainConfigError(f"cpu_threads must be >= 1 or None, got {config.cpu_threads}")
    if config.num_frames is not None and not 1 <= int(config.num_frames) <= MAX_FRAMES:
        raise TrainConfigError(f"num_frames must be in [1, {MAX_FRAMES}] or None, got {config.num_frames}")
    check_mixed_precision(config.mixed_precision)
    if config.report_to not in REPORT_TO:
        raise TrainConfigError(f"report_to must be one of {REPORT_TO}, got {config.report_to!r}")


def check_report_to(report_to: str) -> str | None:
    """'none' -> None; a tracker name -> itself, once its package imports (TrainConfigError otherwise)."""
    from encoder.training.run_log import REPORT_TO

    if report_to not in REPORT_TO:
        raise TrainConfigError(f"report_to must be one of {REPORT_TO}, got {report_to!r}")
    if report_to == "none":
        return None
    import importlib.util

    if importlib.util.find_spec(report_to) is None:
        raise TrainConfigError(f"report_to {report_to!r} needs the {report_to} package: pip install {report_to}")
    return report_to


def resolve_mixed_precision(value: str, cuda: bool) -> str:
    """The accelerate name for ``value`` on this machine: 'auto' is 'bf16' on a CUDA GPU that supports
    it and 'no' elsewhere; 'fp16' without CUDA is a TrainConfigError (on a CPU use 'bf16' or 'no')."""
    check_mixed_precision(value)
    if value == "auto":
        import torch

        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if value == "fp16" and not cuda:
        raise TrainConfigError("mixed_precision 'fp16' needs a CUDA GPU; on the CPU use 'bf16' or 'no'")
    return value


def make_accelerator(
    mixed_precision: str = "no", *, cpu: bool = False, report_to: str = "none", run_dir: str | os.PathLike | None = None
):
    """The ``accelerate.Accelerator`` of a training: devices and processes, ``mixed_precision`` (one of
    :data:`MIXED_PRECISIONS`) and the ``report_to`` tracker writing under ``run_dir/trackers``.
    ``cpu``: stay on the CPU even when CUDA is available. A missing tracker package, an unknown
    precision or fp16 without CUDA fail here, before any work."""
    import torch
    from accelerate import Accelerator

    from encoder.training.run_log import TRACKERS_DIR

    tracker = check_report_to(report_to)
    precision = resolve_mixed_precision(mixed_precision, cuda=not cpu and torch.cuda.is_available())
    project_dir = str(Path(run_dir) / TRACKERS_DIR) if tracker and run_dir is not None else None
    return Accelerator(mixed_precision=precision, cpu=cpu, log_with=tracker, project_dir=project_dir)


# ---------------------------------------------------------------------------------------------
# The resume rule
# ---------------------------------------------------------------------------------------------


def saved_config_path(run_dir: str | os.PathLike) -> Path | None:
    """The run's saved config: ``train_config.json``, else a legacy ``config.json``, else None."""
    for name in (CONFIG_FILE, LEGACY_CONFIG_FILE):
        path = Path(run_dir) / name
        if path.is_file():
            return path
    return None


_ABSENT = object()


def _defaults(config: Any) -> dict:
    """Field name -> default (as plain JSON values) of the fields of ``config`` that have one."""
    defaults = {}
    for spec in dataclasses.fields(config):
        if spec.default is not dataclasses.MISSING:
            defaults[spec.name] = config_to_dict(spec.default)
        elif spec.default_factory is not dataclasses.MISSING:
            defaults[spec.name] = config_to_dict(spec.default_factory())
    return defaults


def resume_differences(saved: dict, config: Any, may_change: Collection[str]) -> list[str]:
    """The settings of ``config`` that forbid resuming a run saved with the config ``saved`` (a dict
    of plain values): every setting that differs, except those in ``may_change``; ``max_steps`` only
    when it shrinks. A setting the saved config lacks (added since) compares with its default."""
    current, defaults = config_to_dict(config), _defaults(config)
    differences = []
    for key in [*current, *(k for k in saved if k not in current)]:
        if key in may_change or key == "max_steps":
            continue
        if current.get(key, _ABSENT) != saved.get(key, defaults.get(key, _ABSENT)):
            differences.append(key)
    if "max_steps" in saved and int(config.max_steps) < int(saved["max_steps"]):
        differences.append("max_steps")
    return differences


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """The step of a checkpoint directory ``step-XXXXXXXX``."""
    from encoder.training.checkpoints import STEP_DIR_PATTERN

    match = STEP_DIR_PATTERN.match(Path(checkpoint).name)
    if match is None:
        raise ValueError(f"{checkpoint} is not a checkpoint directory (step-N)")
    return int(match.group(1))


def follow_schedule(optimizer, scheduler) -> None:
    """Set each parameter group's learning rate to the schedule's value at the scheduler's (restored)
    step. Without a change of ``max_steps`` that is the learning rate the checkpoint stored; with a
    longer run it is the longer schedule's, from the first step after the checkpoint. Schedules
    without ``lr_lambdas`` (not a ``LambdaLR``) are left alone."""
    from encoder.training.checkpoints import unwrap

    optimizer, scheduler = unwrap(optimizer), unwrap(scheduler)
    rules = getattr(scheduler, "lr_lambdas", None)
    if rules is None:
        return
    for group, base, rule in zip(optimizer.param_groups, scheduler.base_lrs, rules):
        group["lr"] = base * rule(scheduler.last_epoch)


def check_resume(config: Any, *, resume: bool, may_change: Collection[str]) -> Path | None:
    """Apply the resume rule (module docstring) to ``config.output_dir``: the checkpoint to continue
    from, or None to start at step 0. Reads only; TrainConfigError when the directory cannot be used."""
    from encoder.training.checkpoints import latest_checkpoint

    run_dir = Path(config.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainConfigError(f"output_dir {run_dir} is a file, not a directory")
    checkpoint = latest_checkpoint(run_dir)
    has_model = (run_dir / MODEL_DIR).exists()
    if not resume:
        if checkpoint is not None or has_model:
            raise TrainConfigError(
                f"{run_dir} already holds a training run; resume it (the default, --resume) "
                "or choose another output directory"
            )
        return None
    if checkpoint is None:
        if has_model:
            raise TrainConfigError(
                f"{run_dir} holds a final model but no checkpoint to resume from; choose another output directory"
            )
        return None
    saved_path = saved_config_path(run_dir)
    if saved_path is not None:
        saved = read_config_values(saved_path, TrainConfigError)
        differences = resume_differences(saved, config, may_change)
        if differences:
            grown = ""
            if "max_steps" in differences:
                grown = f"; max_steps may grow on resume but not shrink (the run has {saved['max_steps']})"
            raise TrainConfigError(
                f"cannot resume {run_dir}: these settings differ from its {saved_path.name}: {differences}{grown}. "
                "Give the run's own settings, or choose another output directory for a new run"
            )
    return checkpoint


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class TrainingRun:
    """One training run: its directory, its accelerator and where it resumes from.

    config: the run's config dataclass, with at least the fields :func:`check_run_settings` checks
        and ``keep_checkpoints``; it is saved as ``train_config.json`` by :meth:`begin`.
    resume: the resume rule (module docstring), applied here before anything is written.
    may_change: the settings that may differ from the saved config on resume.
    cpu: stay on the CPU even when CUDA is available.

    Every process of a multi-process run builds one; process 0 (``main``) writes the files.
    """

    def __init__(self, config: Any, *, resume: bool = True, may_change: Collection[str] = (), cpu: bool = False):
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.model_dir = self.run_dir / MODEL_DIR
        self.resume_from = check_resume(config, resume=resume, may_change=may_change)
        self.accelerator = make_accelerator(
            config.mixed_precision, cpu=cpu, report_to=config.report_to, run_dir=self.run_dir
        )
        self.main = self.accelerator.is_main_process
        self.metrics = None
        self._trackers_started = False

    @property
    def finished(self) -> bool:
        """The newest checkpoint has reached ``max_steps`` and the final model is written."""
        return (
            self.resume_from is not None
            and checkpoint_step(self.resume_from) >= self.config.max_steps
            and self.model_dir.is_dir()
        )

    def note(self, text: str) -> None:
        """Append a timed line to ``train_log.txt`` (process 0 only)."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def begin(self) -> None:
        """Create the run directory and save the config as ``train_config.json`` (process 0), every
        process waiting for it."""
        self.accelerator.wait_for_everyone()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / CONFIG_FILE)
        self.accelerator.wait_for_everyone()

    def restore(self, *, model, optimizer, scheduler) -> tuple[int, dict]:
        """Load the checkpoint being resumed into the (unwrapped) model, optimizer and scheduler and this
        process's RNG; returns (step, data_state), or (0, {}) for a new run."""
        if self.resume_from is None:
            return 0, {}
        from encoder.training.checkpoints import load_training_checkpoint

        step, data_state, _ = load_training_checkpoint(
            self.resume_from, model=model, optimizer=optimizer, scheduler=scheduler
        )
        if optimizer is not None and scheduler is not None:
            follow_schedule(optimizer, scheduler)  # max_steps may have grown
        self.note(f"resumed from {self.resume_from.name} (step {step})")
        return step, data_state

    def checkpoint_due(self, step: int) -> bool:
        """A checkpoint is written every ``checkpoint_every`` steps and at ``max_steps``."""
        return step % self.config.checkpoint_every == 0 or step == self.config.max_steps

    def save_checkpoint(
        self, step: int, *, model_state: dict, optimizer, scheduler, data_state: dict, extra: dict | None = None
    ) -> Path:
        """Write the checkpoint of ``step`` (every process calls it), keeping the newest ``keep_checkpoints``."""
        from encoder.training.checkpoints import save_training_checkpoint

        return save_training_checkpoint(
            self.run_dir,
            step,
            model_state=model_state,
            optimizer=optimizer,
            scheduler=scheduler,
            data_state=data_state,
            extra=extra,
            keep_last=self.config.keep_checkpoints,
        )

    def start_logging(self, start: int):
        """Start the ``report_to`` tracker and open ``metrics.jsonl`` (process 0; rows after ``start``,
        left by a killed run, are dropped). Returns the MetricsLog, None on other processes."""
        from encoder.training.run_log import MetricsLog, start_trackers

        start_trackers(
            self.accelerator, check_report_to(self.config.report_to), self.run_dir, config_to_dict(self.config)
        )
        self._trackers_started = True
        if self.main:
            self.metrics = MetricsLog(self.run_dir / METRICS_FILE, resume_step=start, accelerator=self.accelerator)
        return self.metrics

    def close(self) -> None:
        """Close ``metrics.jsonl`` and the tracker (also after a failure; calling it again does nothing)."""
        from encoder.training.run_log import finish_trackers

        if self.metrics is not None:
            self.metrics.close()
        if self._trackers_started:
            self._trackers_started = False
            finish_trackers(self.accelerator)

    def finish(
        self,
        write_model: Callable[[Path], Any],
        *,
        plot_keys: tuple[str, ...] = ("loss", "val_loss"),
        title: str | None = None,
    ) -> Path:
        """End the run: close the logs, have ``write_model(folder)`` write the final model into a new
        folder that then replaces ``model/`` atomically, and plot ``loss.png`` (process 0). Returns
        ``model/``."""
        from encoder.common.atomic_files import save_directory_atomically
        from encoder.training.run_log import plot_metrics_if_installed

        self.close()
        self.accelerator.wait_for_everyone()
        if self.main:

            def write(folder: Path) -> None:
                folder.mkdir(parents=True, exist_ok=True)
                write_model(folder)

            save_directory_atomically(self.model_dir, write)  # a kill mid-save keeps the old model
            plot_metrics_if_installed(
                self.run_dir / METRICS_FILE, self.run_dir / PLOT_FILE, keys=plot_keys, title=title
            )
            self.note(f"saved the final model to {self.model_dir}")
        self.accelerator.wait_for_everyone()
        return self.model_dir
