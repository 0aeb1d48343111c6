"""A run's WORK folder: reading its JSON files (written with ``encoder.common.atomic_files.write_json``)
and the error raised when the run in it cannot go on as asked."""

from __future__ import annotations

import json
from pathlib import Path

from encoder.common.errors import PrismVlmError


class RunError(PrismVlmError, RuntimeError):
    """The run in WORK cannot go on as asked (another profile, no checkpoint, nothing to report);
    the message says what to do. ``scripts/train_demo.py`` exits with it."""


def read_json(path: Path, default=None):
    """The JSON value in ``path``, or ``default`` when there is no such file."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default
