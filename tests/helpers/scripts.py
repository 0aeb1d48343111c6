"""The repository's scripts as modules for the tests (``scripts/`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"
_LOADED: dict = {}


def import_script(name: str):
    """The module of ``scripts/NAME.py``, loaded once per test session."""
    if name not in _LOADED:
        spec = importlib.util.spec_from_file_location(f"{name}_for_tests", SCRIPTS_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _LOADED[name] = module
    return _LOADED[name]
