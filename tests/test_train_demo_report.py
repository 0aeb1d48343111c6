"""scripts/train_demo.py's reports disclose what a run did not do itself."""

import dataclasses
import json


def test_reused_stages_and_recipe_choices_are_printed(load_script):
    script = load_script("train_demo")
    lines = script._changes({"profile_changes": [], "reused_stages": {"stage1": "copied from\nrun X"}})
    assert lines[0] == "**Stage `stage1` was not trained by this run but reused:** copied from run X"
    assert script._changes({"profile_changes": []}) == []  # nothing reused, nothing said
    full = script._choices(dataclasses.asdict(script.PROFILES["full"]))
    assert "15000 more clips" in full and "3 hard-negative captions" in full
    smoke = script._choices(dataclasses.asdict(script.PROFILES["smoke"]))
    assert "more clips" not in smoke and "hard-negative" not in smoke


def test_stage1_token_dropping_reaches_the_config_and_the_report(load_script, monkeypatch, tmp_path):
    script = load_script("train_demo")
    import encoder.pretrain.stage1 as stage1

    seen = []
    monkeypatch.setattr(stage1, "run_stage1", lambda config: seen.append(config) or tmp_path)
    smoke = script.PROFILES["smoke"]
    script.run_stage1_training(tmp_path, dataclasses.replace(smoke, stage1_drop_ratio=0.0), 0, tmp_path / "m.jsonl")
    script.run_stage1_training(tmp_path, smoke, 0, tmp_path / "m.jsonl")
    assert [config.drop_ratio for config in seen] == [0.0, 0.5]

    profile = dataclasses.asdict(smoke)
    assert "dropping 0.5 of the video tokens (as the paper)" in script._choices(profile)
    assert "**no video tokens dropped** (paper: 0.5" in script._choices({**profile, "stage1_drop_ratio": 0.0})
    assert "**0.25 of the video tokens dropped**" in script._choices({**profile, "stage1_drop_ratio": 0.25})
    del profile["stage1_drop_ratio"]  # a profile.json written before the field existed
    assert "dropping 0.5 of the video tokens" in script._choices(profile)


def test_a_run_saved_before_a_profile_field_existed_continues(load_script, tmp_path):
    script = load_script("train_demo")
    full = script.PROFILES["full"]
    saved = dataclasses.asdict(full)
    del saved["stage1_drop_ratio"]  # profile.json of a run started before the field existed
    script.write_json(tmp_path / "profile.json", saved)
    current = json.loads(json.dumps(dataclasses.asdict(full)))
    assert script.saved_profile(tmp_path / "profile.json", full) == current
    # ... but not when the field is set away from its default: that is another recipe
    changed = dataclasses.replace(full, stage1_drop_ratio=0.0)
    assert script.saved_profile(tmp_path / "profile.json", changed) != json.loads(json.dumps(dataclasses.asdict(changed)))
    assert script.saved_profile(tmp_path / "missing.json", full) is None
