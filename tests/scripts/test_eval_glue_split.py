"""scripts/eval_glue_split.py: a glue model scored on one split of a shapes corpus, as the demo pipeline scores test."""

import json

import pytest

from tests.helpers.tiny_glue import FRAMES, SIZE, build_tiny_glue, save_tiny_glue
from vlm.demo_pipeline.profiles import PROFILES
from vlm.shapes import ShapesConfig, make_shapes_corpus, read_attributes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scores_every_question_of_the_split_from_the_cache(load_script, smollm2_tokenizer, tmp_path, capsys):
    from encoder.video.clips import list_videos
    from encoder.videoprism.features import extract_features

    corpus = make_shapes_corpus(tmp_path / "corpus", 48, seed=5, config=ShapesConfig(num_frames=8), progress=False)
    model = build_tiny_glue(smollm2_tokenizer)
    glue = save_tiny_glue(model, smollm2_tokenizer, tmp_path)
    videos = list_videos(corpus / "val" / "captions.jsonl")
    extract_features(
        model.encoder, videos, tmp_path / "cache", num_frames=FRAMES, size=SIZE, num_workers=0, progress=False
    )
    script = load_script("eval_glue_split")
    out = tmp_path / "scores.json"
    assert (
        script.main(
            [
                "--model",
                str(glue),
                "--features",
                str(tmp_path / "cache"),
                "--corpus",
                str(corpus),
                "--split",
                "val",
                "--profile",
                "smoke",
                "--json-out",
                str(out),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    val_clips = read_attributes(corpus, "val")
    questions = [line for line in (corpus / "val" / "qa.jsonl").read_text().splitlines() if line.strip()]
    assert saved["split"] == "val" and saved["questions"] == len(questions) > 0
    assert saved["closed_per_type"]["num_questions"] == saved["questions"]
    assert saved["captions"]["num_clips"] == min(len(val_clips), PROFILES["smoke"].caption_clips)
    assert printed["closed_all"] == round(saved["closed_per_type"]["accuracy"], 1)
    assert 0 <= printed["closed_all"] <= 100 and set(printed["closed_per_type"]) <= {
        "colour",
        "shape",
        "motion",
        "count",
    }
    with pytest.raises(SystemExit, match="refs.jsonl is missing"):
        script.main(
            ["--model", str(glue), "--features", str(tmp_path / "cache"), "--corpus", str(corpus), "--split", "nosuch"]
        )
