"""scripts/probe_encoder_variant.py: a stage-1 recipe trained and probed on the val split (smoke profile)."""

import json

import pytest

from vlm.shapes import ANSWER_VOCABULARY, ShapesConfig, make_shapes_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_trains_probes_on_val_and_reproduces_with_the_trained_encoder(load_script, tmp_path):
    corpus = make_shapes_corpus(tmp_path / "corpus", 60, seed=3, config=ShapesConfig(num_frames=8), progress=False)
    script = load_script("probe_encoder_variant")
    common = ["--corpus", str(corpus), "--profile", "smoke", "--probe-epochs", "2", "--threads", "1"]
    overrides = ["stage1_steps=3", "pretrain_clips=8", "stage1_hard_negatives=2"]
    assert (
        script.main([*common, "--work", str(tmp_path / "trained"), *[a for o in overrides for a in ("--set", o)]]) == 0
    )
    trained = json.loads((tmp_path / "trained" / "result.json").read_text())
    assert trained["profile_overrides"] == overrides
    assert json.loads((tmp_path / "trained" / "profile.json").read_text())["stage1_steps"] == 3
    # stage 1 read the corpus's train split plus 8 more clips of its stream, each with hard negatives
    rows = [
        json.loads(line)
        for line in (tmp_path / "trained" / "manifests" / "stage1_train.jsonl").read_text().splitlines()
    ]
    train = (corpus / "train" / "captions.jsonl").read_text().count("\n")
    assert len(rows) == train + 8 and all(len(row["negative_captions"]) == 3 for row in rows)
    pretrain = json.loads((tmp_path / "trained" / "pretrain_corpus" / "corpus.json").read_text())
    assert pretrain["first_index"] == 60 and pretrain["seed"] == 3 and pretrain["config"]["num_frames"] == 8
    assert (
        json.loads((tmp_path / "trained" / "stage1" / "model" / "pretraining.json").read_text())["config"][
            "hard_negatives"
        ]
        == 2
    )
    for attribute in ("colour", "shape", "motion"):
        assert 0.0 <= trained["stage1"][attribute] <= 1.0
        assert set(trained["stage1"][f"{attribute}_per_class"]) <= set(ANSWER_VOCABULARY[attribute])
    # only train and val clips were encoded: the test split is never looked at
    index = (tmp_path / "trained" / "features" / "stage1" / "index.jsonl").read_text()
    assert "/val/" in index and "/train/" in index and "/test/" not in index

    encoder = tmp_path / "trained" / "stage1" / "model"
    assert script.main([*common, "--work", str(tmp_path / "given"), "--encoder", str(encoder)]) == 0
    given = json.loads((tmp_path / "given" / "result.json").read_text())
    assert not (tmp_path / "given" / "stage1").exists()  # nothing trained
    assert not (tmp_path / "given" / "pretrain_corpus").exists()
    assert given["stage1"] == trained["stage1"]  # same encoder, same probe seed: the same scores
    # the whole video-text model against each clip's hard negatives, on train and val
    for split in ("train", "val"):
        scores = trained["stage1"]["caption_vs_negatives"][split]
        assert scores["clips"] == min(320, (corpus / split / "captions.jsonl").read_text().count("\n"))
        assert all(0.0 <= scores[k] <= 1.0 for k in ("shape", "opposite_motion", "other_motion"))
