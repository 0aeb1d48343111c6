"""scripts/train_demo.py's reports disclose what a run did not do itself."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_demo_for_tests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_reused_stages_and_recipe_choices_are_printed():
    script = load_script()
    lines = script._changes({"profile_changes": [], "reused_stages": {"stage1": "copied from\nrun X"}})
    assert lines[0] == "**Stage `stage1` was not trained by this run but reused:** copied from run X"
    assert script._changes({"profile_changes": []}) == []  # nothing reused, nothing said
    full = script._choices(dataclasses.asdict(script.PROFILES["full"]))
    assert "15000 more clips" in full and "3 hard-negative captions" in full
    smoke = script._choices(dataclasses.asdict(script.PROFILES["smoke"]))
    assert "more clips" not in smoke and "hard-negative" not in smoke
