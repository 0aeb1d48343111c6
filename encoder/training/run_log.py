"""Metrics of a training run: a JSONL log (one flushed line per record) and its loss-curve PNG."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from encoder.common.atomic_files import atomic_output_path
from encoder.common.jsonl import JsonlAppender, read_jsonl_tolerant, write_jsonl_atomically


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics JSONL file (a torn last line from a killed writer is ignored)."""
    return read_jsonl_tolerant(path)


REPORT_TO = ("none", "tensorboard", "trackio", "wandb")  # accelerate's trackers we offer (encoder.training.run checks)
TRACKERS_DIR = "trackers"  # under a run directory: where local trackers (TensorBoard, Trackio) write


def start_trackers(accelerator, report_to: str | None, run_dir: str | os.PathLike, config: dict) -> None:
    """``accelerator.init_trackers`` for a run (project: the run directory's name) with its config
    flattened to numbers and strings (what every tracker accepts as hyper-parameters)."""
    if report_to is None:
        return
    flat = {}
    for key, value in config.items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
    accelerator.init_trackers(Path(run_dir).resolve().name, config=flat)


def finish_trackers(accelerator) -> None:
    """Flush and close the run's trackers (nothing without report_to). Not ``accelerator.end_training``,
    which also tears down the process group that a multi-process run still needs."""
    for tracker in accelerator.trackers:
        tracker.finish()


class MetricsLog:
    """Appends one JSON object per record to ``path``, flushed at once.

    ``resume_step=s``: a resumed run; rows with ``step > s`` (written after the checkpoint being
    resumed, by the killed run) are dropped first, so the log holds each step once. Without it,
    records are appended to whatever the file holds.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, accelerator=None):
        self.path = Path(path)
        self.accelerator = accelerator  # its trackers (report_to) also get every record's numbers
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [row for row in read_metrics(self.path) if int(row.get("step", 0)) <= resume_step]
            write_jsonl_atomically(self.path, kept, ensure_ascii=True)
        self._appender = JsonlAppender(self.path, ensure_ascii=True, sync=False)  # flushed every record

    def log(self, step: int, **values: Any) -> dict:
        """Append ``{"step": step, **values}`` and flush; returns the record."""
        record = {"step": int(step), **values}
        self._appender.write([record])
        if self.accelerator is not None and self.accelerator.trackers:
            numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers:
                self.accelerator.log(numbers, step=int(step))
        return record

    def close(self) -> None:
        self._appender.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_metrics(
    metrics_jsonl: str | os.PathLike,
    png_path: str | os.PathLike,
    keys: Sequence[str] = ("loss", "val_loss"),
    title: str | None = None,
) -> Path:
    """Plot each of ``keys`` found in the log against ``step`` into a PNG (matplotlib, Agg canvas,
    no global backend change); written to a temporary file then renamed. Returns the PNG path.
    Raises encoder.common.extras.MissingExtraError without matplotlib (the ``train`` extra)."""
    from encoder.common.extras import require

    require("matplotlib", "train", "loss plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_jsonl)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    plotted = 0
    for key in keys:
        points = [(row["step"], row[key]) for row in rows if "step" in row and isinstance(row.get(key), (int, float))]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
            plotted += 1
    if plotted:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(png_path) as temporary:
        figure.savefig(temporary, format="png")
    return png_path


def plot_metrics_if_installed(metrics_jsonl: str | os.PathLike, png: str | os.PathLike, **kwargs) -> Path | None:
    """:func:`plot_metrics`, or nothing (one warning per process) when matplotlib is not installed:
    training never fails for want of its plot (the JSONL log is the record)."""
    from encoder.common.extras import is_installed

    if not is_installed("matplotlib"):
        warnings.warn(
            "matplotlib is not installed, so no loss plot is drawn (pip install 'prism-vlm[train]')", stacklevel=2
        )
        return None
    return plot_metrics(metrics_jsonl, png, **kwargs)
