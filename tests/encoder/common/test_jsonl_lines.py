"""JSON lines holding strings that are not valid UTF-8 text (non-UTF-8 file names as ``os.fsdecode``
gives them), and the numbered tolerant reader that reports the lines it skips."""

from __future__ import annotations

import os

import pytest

from encoder.common.jsonl import append_jsonl, iter_jsonl_numbered, read_jsonl_tolerant, write_jsonl_atomically


@pytest.mark.quick
def test_rows_with_lone_surrogates_are_written_and_read_back_unchanged(tmp_path):
    name = os.fsdecode(b"clip_\xff.mp4")
    rows = [{"video": name, "caption": "café"}, {"video": "plain", "caption": "déjà vu"}]
    append_jsonl(tmp_path / "appended.jsonl", rows)
    write_jsonl_atomically(tmp_path / "whole.jsonl", rows)
    for path in (tmp_path / "appended.jsonl", tmp_path / "whole.jsonl"):
        assert read_jsonl_tolerant(path) == rows
        lines = path.read_bytes().splitlines()
        assert b"\\udcff" in lines[0] and "déjà".encode() in lines[1]  # only the row that needs it is escaped


@pytest.mark.quick
def test_skipped_lines_are_reported_with_their_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\nnot json\n[1]\n\xff\xfe\n{"b": 2}\n{"torn')
    skipped = []
    rows = list(iter_jsonl_numbered(path, on_skipped=lambda number, reason, raw: skipped.append((number, reason, raw))))
    assert rows == [(1, {"a": 1}), (6, {"b": 2})]
    assert [(number, reason.split(" (")[0], raw) for number, reason, raw in skipped] == [
        (3, "not valid JSON", b"not json\n"),
        (4, "not a JSON object", b"[1]\n"),
        (5, "not UTF-8 text", b"\xff\xfe\n"),
    ]
