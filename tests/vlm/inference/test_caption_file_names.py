"""``prism-vlm caption --videos DIR --out OUT`` over a folder holding a file whose name is not UTF-8:
its row is written (readable back as the same clip id) and a resume skips it."""

from __future__ import annotations

import json
import os

import pytest

from encoder.common.jsonl import read_jsonl_tolerant
from tests.helpers.tiny_glue import write_clip
from vlm.cli import main as cli


@pytest.mark.quick
def test_caption_a_folder_with_a_file_name_that_is_not_utf8(glue_dir, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_clip(folder / "a.mp4", seed=0)
    raw_folder = os.fsencode(str(folder))
    with open(os.path.join(raw_folder, b"clip_\xff.mp4"), "wb") as handle:
        handle.write((folder / "a.mp4").read_bytes())
    with open(os.path.join(raw_folder, b"broken_\xfe.mp4"), "wb") as handle:
        handle.write(b"not a video" * 20)
    out = tmp_path / "preds.jsonl"
    argv = ["caption", "--videos", str(folder), "--out", str(out), "--model", str(glue_dir)]
    argv += ["--device", "cpu", "--max-new-tokens", "4", "--workers", "0", "--no-progress"]

    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["captioned"] == 2
    rows = {row["video"]: row for row in read_jsonl_tolerant(out)}
    assert set(rows) == {"a", os.fsdecode(b"clip_\xff")}
    assert rows["a"]["caption"] == rows[os.fsdecode(b"clip_\xff")]["caption"]  # the same bytes
    errors = read_jsonl_tolerant(tmp_path / "preds.errors.jsonl")
    assert [row["video"] for row in errors] == [os.fsdecode(b"broken_\xfe")]
    assert os.fsencode(errors[0]["source"]) == os.path.join(raw_folder, b"broken_\xfe.mp4")

    assert cli.main(argv) == 0  # the resume recognises every row
    assert json.loads(capsys.readouterr().out) | {"output": None} == {
        "output": None,
        "captioned": 0,
        "errors": 0,
        "skipped": 3,
        "merged": 0,
    }
