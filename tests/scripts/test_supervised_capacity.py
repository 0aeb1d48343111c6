"""scripts/supervised_capacity.py: the architecture's supervised upper bound, scored on val only."""

import json
from pathlib import Path

import pytest

from vlm.shapes import ShapesConfig, make_shapes_corpus, read_attributes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_trains_on_one_object_train_clips_and_scores_val(load_script, tmp_path):
    corpus = make_shapes_corpus(tmp_path / "corpus", 48, seed=5, config=ShapesConfig(num_frames=8), progress=False)
    script = load_script("supervised_capacity")
    rows = script.one_object_clips(corpus, "val")
    val = [clip for clip in read_attributes(corpus, "val") if clip.count == 1]
    assert [path.name for path, _ in rows] == [Path(clip.video).name for clip in val]
    assert all("/val/" in str(path) for path, _ in rows)
    assert rows[0][1]["shape"] == script.ANSWER_VOCABULARY["shape"].index(val[0].objects[0].shape)

    common = [
        "--corpus",
        str(corpus),
        "--profile",
        "smoke",
        "--steps",
        "3",
        "--batch",
        "4",
        "--threads",
        "1",
        "--set",
        "hidden_size=32",
        "--set",
        "mlp_size=64",
    ]
    results = []
    for name in ("a", "b"):
        assert script.main([*common, "--work", str(tmp_path / name)]) == 0
        results.append(json.loads((tmp_path / name / "result.json").read_text()))
    assert results[0]["val_accuracy"] == results[1]["val_accuracy"]  # seeded
    assert results[0]["val_clips"] == len(val)
    assert results[0]["train_clips"] == sum(clip.count == 1 for clip in read_attributes(corpus, "train"))
    assert results[0]["profile_overrides"] == ["hidden_size=32", "mlp_size=64"]
    assert set(results[0]["val_accuracy"]) == {"colour", "shape", "motion"}
    assert results[0]["tower"] == "videoprism"

    cnn = []  # the CNN reference: same clips and labels, seeded too
    for name in ("cnn_a", "cnn_b"):
        assert script.main([*common, "--tower", "cnn", "--work", str(tmp_path / name)]) == 0
        cnn.append(json.loads((tmp_path / name / "result.json").read_text()))
    assert cnn[0]["tower"] == "cnn" and cnn[0]["val_accuracy"] == cnn[1]["val_accuracy"]
    assert cnn[0]["parameters"] != results[0]["parameters"] and cnn[0]["val_clips"] == len(val)
