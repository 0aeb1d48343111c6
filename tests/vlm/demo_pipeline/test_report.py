"""The demo pipeline's reports (vlm.demo_pipeline, run by scripts/train_demo.py) disclose what a run did not do itself."""

import dataclasses
import json

import pytest

from encoder.common.atomic_files import write_json
from vlm.demo_pipeline import stages
from vlm.demo_pipeline.profiles import PROFILES, saved_profile
from vlm.demo_pipeline.report import recipe_choices, run_disclosures

pytestmark = pytest.mark.quick


def test_reused_stages_and_recipe_choices_are_printed():
    lines = run_disclosures({"profile_changes": [], "reused_stages": {"stage1": "copied from\nrun X"}})
    assert lines[0] == "**Stage `stage1` was not trained by this run but reused:** copied from run X"
    assert run_disclosures({"profile_changes": []}) == []  # nothing reused, nothing said
    full = recipe_choices(dataclasses.asdict(PROFILES["full"]))
    assert "15000 more clips" in full and "3 hard-negative captions" in full
    smoke = recipe_choices(dataclasses.asdict(PROFILES["smoke"]))
    assert "more clips" not in smoke and "hard-negative" not in smoke


def test_stage1_token_dropping_reaches_the_config_and_the_report(monkeypatch, tmp_path):
    import encoder.videoprism.pretrain.stage1 as stage1

    seen = []
    monkeypatch.setattr(stage1, "run_stage1", lambda config: seen.append(config) or tmp_path)
    smoke = PROFILES["smoke"]
    stages.run_stage1_training(tmp_path, dataclasses.replace(smoke, stage1_drop_ratio=0.0), 0, tmp_path / "m.jsonl")
    stages.run_stage1_training(tmp_path, smoke, 0, tmp_path / "m.jsonl")
    assert [config.drop_ratio for config in seen] == [0.0, 0.5]

    profile = dataclasses.asdict(smoke)
    assert "dropping 0.5 of the video tokens (as the paper)" in recipe_choices(profile)
    assert "**no video tokens dropped** (paper: 0.5" in recipe_choices({**profile, "stage1_drop_ratio": 0.0})
    assert "**0.25 of the video tokens dropped**" in recipe_choices({**profile, "stage1_drop_ratio": 0.25})
    del profile["stage1_drop_ratio"]  # a profile.json written before the field existed
    assert "dropping 0.5 of the video tokens" in recipe_choices(profile)


def test_a_run_saved_before_a_profile_field_existed_continues(tmp_path):
    full = PROFILES["full"]
    saved = dataclasses.asdict(full)
    del saved["stage1_drop_ratio"]  # profile.json of a run started before the field existed
    write_json(tmp_path / "profile.json", saved)
    current = json.loads(json.dumps(dataclasses.asdict(full)))
    assert saved_profile(tmp_path / "profile.json", full) == current
    # ... but not when the field is set away from its default: that is another recipe
    changed = dataclasses.replace(full, stage1_drop_ratio=0.0)
    assert saved_profile(tmp_path / "profile.json", changed) != json.loads(json.dumps(dataclasses.asdict(changed)))
    assert saved_profile(tmp_path / "missing.json", full) is None
