"""Tests for the shared file helpers: encoder.common.jsonl (tolerant reading, appending, torn tails,
whole files written atomically) and encoder.common.atomic_files (atomic files and folders)."""

from __future__ import annotations

import json
import os

import pytest

from encoder.common.atomic_files import (
    atomic_output_path,
    save_directory_atomically,
    write_file_atomically,
    write_text_atomically,
)
from encoder.common.jsonl import (
    JsonlAppender,
    append_jsonl,
    cut_torn_tail,
    jsonl_text,
    read_jsonl_tolerant,
    write_jsonl_atomically,
)

pytestmark = pytest.mark.quick

# ------------------------------------------------------------------------------------------ JSON lines


def test_cut_torn_tail_moves_the_torn_bytes_aside(tmp_path):
    path = tmp_path / "f.jsonl"
    torn = tmp_path / "f.jsonl.torn"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c"')
    assert cut_torn_tail(path) == 4
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n'
    assert torn.read_text() == '{"c"\n'  # nothing is deleted
    assert cut_torn_tail(path) == 0
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n'
    path.write_text("no newline at all")
    cut_torn_tail(path)
    assert path.read_text() == ""
    assert torn.read_text() == '{"c"\nno newline at all\n'


def test_jsonl_text_is_one_json_dumps_per_row():
    rows = [{"a": "é"}, {"b": [1, 2]}]
    assert jsonl_text(rows) == '{"a": "é"}\n{"b": [1, 2]}\n'
    assert jsonl_text(rows, ensure_ascii=True) == "".join(json.dumps(row) + "\n" for row in rows)
    assert jsonl_text([]) == ""


def test_append_jsonl_appends_after_moving_a_torn_tail_aside(tmp_path):
    path = tmp_path / "deep" / "log.jsonl"
    append_jsonl(path, [])
    assert not path.exists()  # nothing to write: no file
    append_jsonl(path, ({"n": n} for n in range(2)))  # any iterable; parent folders made
    path.write_bytes(path.read_bytes() + b'{"n": 2, "tex')  # a writer killed mid-line
    append_jsonl(path, [{"n": 3, "text": "café"}])
    assert read_jsonl_tolerant(path) == [{"n": 0}, {"n": 1}, {"n": 3, "text": "café"}]
    assert path.read_text(encoding="utf-8").endswith('"café"}\n')
    assert (tmp_path / "deep" / "log.jsonl.torn").read_bytes() == b'{"n": 2, "tex\n'
    append_jsonl(path, [{"text": "é"}], ensure_ascii=True)
    assert path.read_text(encoding="utf-8").endswith('{"text": "\\u00e9"}\n')


def test_appends_are_synced_unless_told_not_to(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    append_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    assert synced
    synced.clear()
    append_jsonl(tmp_path / "a.jsonl", [{"a": 2}], sync=False)
    with JsonlAppender(tmp_path / "a.jsonl", sync=False) as appender:
        appender.write([{"a": 3}])
        assert read_jsonl_tolerant(tmp_path / "a.jsonl")[-1] == {"a": 3}  # flushed at once
    assert not synced
    assert read_jsonl_tolerant(tmp_path / "a.jsonl") == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_write_jsonl_atomically_replaces_the_whole_file(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl_atomically(path, ({"n": n, "s": "é"} for n in range(3))) == 3
    assert path.read_text(encoding="utf-8") == "".join(f'{{"n": {n}, "s": "é"}}\n' for n in range(3))
    assert write_jsonl_atomically(path, [{"n": 9}], ensure_ascii=True) == 1
    assert path.read_text() == '{"n": 9}\n'

    def broken():
        yield {"n": 10}
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_jsonl_atomically(path, broken())
    assert path.read_text() == '{"n": 9}\n'  # the old content, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]


# ------------------------------------------------------------------------------------------ atomic files


def test_a_directory_saved_atomically_survives_a_failure_mid_save(tmp_path):
    """The final glue is saved beside its folder and renamed into place: a save killed halfway leaves
    the previous model loadable, never a mix."""
    model = tmp_path / "model"

    def write(version, fail=False):
        def fill(folder):
            folder.mkdir()
            (folder / "config.json").write_text(version)
            if fail:
                raise KeyboardInterrupt  # killed between the two files
            (folder / "weights").write_text(version * 3)

        return fill

    save_directory_atomically(model, write("v1"))
    assert (model / "weights").read_text() == "v1v1v1"
    with pytest.raises(KeyboardInterrupt):
        save_directory_atomically(model, write("v2", fail=True))
    assert (model / "config.json").read_text() == "v1" and (model / "weights").read_text() == "v1v1v1"
    save_directory_atomically(model, write("v3"))
    assert (model / "weights").read_text() == "v3v3v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no leftovers once a save succeeds


def test_write_file_atomically_replaces_whole(tmp_path):
    path = tmp_path / "meta.json"
    write_file_atomically(path, b'{"a": 1}')
    write_file_atomically(path, b'{"a": 2}')
    assert path.read_bytes() == b'{"a": 2}' and sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_write_text_atomically_makes_the_folders(tmp_path):
    path = tmp_path / "a" / "b" / "notes.txt"
    write_text_atomically(path, "café\n")
    assert path.read_bytes() == "café\n".encode()
    write_text_atomically(path, "x", encoding="latin-1")
    assert path.read_text() == "x" and sorted(p.name for p in path.parent.iterdir()) == ["notes.txt"]


def test_atomic_output_path_renames_a_finished_file_and_drops_a_failed_one(tmp_path):
    """For writers that want a file name: the file appears at its path whole, or not at all."""
    path = tmp_path / "shard.bin"
    with atomic_output_path(path) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".shard.bin.tmp-")
        temporary.write_bytes(b"one")
        assert not path.exists()  # not there until the block ends
    assert path.read_bytes() == b"one"
    with pytest.raises(ValueError):
        with atomic_output_path(path) as temporary:
            temporary.write_bytes(b"half")
            raise ValueError("writer failed")
    assert path.read_bytes() == b"one"
    with pytest.raises(FileNotFoundError):
        with atomic_output_path(path):
            pass  # the writer wrote nothing: an error, the old file kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.bin"]
