"""Batch captioning into JSONL: inputs (folder, manifest, HF dataset, feature cache), flushing,
resume (also after a torn line and after a killed multi-process run), unreadable clips, and a real
2-process ``accelerate launch`` whose merged output equals the 1-process output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.common.jsonl import read_jsonl_tolerant
from encoder.video.clips import Clip, ClipListError, clips_from_feature_cache, decode_clip, list_clips
from tests.helpers.launch import two_process_command
from tests.helpers.tiny_glue import FRAMES, SIZE, build_tiny_glue, write_clip
from vlm.cli import main as cli
from vlm.inference.assistant import VideoAssistant
from vlm.inference.batch_caption import caption_clips, errors_path_for

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    return build_tiny_glue(smollm2_tokenizer)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """Six clips (one in a sub-folder) and one file the decoder rejects."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    for i in range(5):
        write_clip(root / f"clip{i}.mp4", seed=i)
    write_clip(root / "sub" / "clip5.mp4", seed=5)
    (root / "broken.mp4").write_bytes(b"not a video at all" * 50)
    return root


def expected_captions(model, clips):
    """The captions VideoAssistant(model).caption gives each clip on its own."""
    return {
        clip.id: VideoAssistant(model).caption(
            clips=torch.from_numpy(decode_clip(clip, FRAMES, SIZE))[None], max_new_tokens=6
        )[0]
        for clip in clips
    }


def lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.quick
def test_list_clips_from_folder_manifest_and_text(video_dir, tmp_path):
    clips = list_clips(video_dir)
    assert [c.id for c in clips] == ["broken", "clip0", "clip1", "clip2", "clip3", "clip4", "sub/clip5"]
    assert clips[-1].source == str(video_dir / "sub" / "clip5.mp4")

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"video": "v/a.mp4", "id": "video7", "start": 0.5, "end": 1.0})
        + "\n\n"
        + json.dumps({"video": "/abs/b.mp4"})
        + "\n"
    )
    assert list_clips(manifest) == [
        Clip("video7", str(tmp_path / "v" / "a.mp4"), 0.5, 1.0),
        Clip("/abs/b.mp4", "/abs/b.mp4"),
    ]
    listing = tmp_path / "list.txt"
    listing.write_text("x.mp4\nsub/y.mp4\n")
    assert [(c.id, c.source) for c in list_clips(listing)] == [
        ("x.mp4", str(tmp_path / "x.mp4")),
        ("sub/y.mp4", str(tmp_path / "sub/y.mp4")),
    ]

    manifest.write_text(
        json.dumps({"video": "a.mp4", "id": "x"}) + "\n" + json.dumps({"video": "b.mp4", "id": "x"}) + "\n"
    )
    with pytest.raises(ClipListError, match="'x' appears more than once"):
        list_clips(manifest)
    manifest.write_text('{"video": "a.mp4"}\n{"vid": 3}\n')
    with pytest.raises(ClipListError, match=r"m.jsonl:2: 'video' must be a non-empty path string, got None"):
        list_clips(manifest)
    with pytest.raises(FileNotFoundError):
        list_clips(tmp_path / "missing")


def test_folder_captions_flushed_as_they_go_errors_recorded_and_resumed(model, video_dir, tmp_path):
    out = tmp_path / "preds.jsonl"
    clips = list_clips(video_dir)
    seen_after_batch = []

    def on_batch(finished):  # what is on disk after each batch
        seen_after_batch.append(
            (finished, len(read_jsonl_tolerant(out)) + len(read_jsonl_tolerant(errors_path_for(out))))
        )

    counts = caption_clips(
        VideoAssistant(model),
        clips,
        out,
        batch_size=2,
        max_new_tokens=6,
        num_workers=0,
        progress=False,
        on_batch=on_batch,
    )
    assert counts == {"captioned": 6, "errors": 1, "skipped": 0, "merged": 0}
    assert seen_after_batch == [(2, 2), (4, 4), (6, 6), (7, 7)]  # every batch is on disk before the next starts
    rows = lines(out)
    assert [r["video"] for r in rows] == ["clip0", "clip1", "clip2", "clip3", "clip4", "sub/clip5"]
    assert {r["video"]: r["caption"] for r in rows} == expected_captions(model, clips[1:])
    errors = lines(tmp_path / "preds.errors.jsonl")
    assert [e["video"] for e in errors] == ["broken"] and "broken.mp4" in errors[0]["error"]

    # Resume: nothing left to do.
    again = caption_clips(
        VideoAssistant(model), clips, out, batch_size=2, max_new_tokens=6, num_workers=0, progress=False
    )
    assert again["captioned"] == 0 and again["errors"] == 0 and again["skipped"] == 7
    assert lines(out) == rows

    # A run killed mid-line: the last two captions lost, a torn line left behind.
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:-2]) + '{"video": "clip4", "capt')
    resumed = caption_clips(
        VideoAssistant(model), clips, out, batch_size=4, max_new_tokens=6, num_workers=2, progress=False
    )
    assert resumed["captioned"] == 2 and resumed["skipped"] == 5
    assert lines(out) == rows  # torn line cut off, the two clips captioned again, identically


def test_resume_after_a_tail_torn_inside_a_multibyte_character(model, video_dir, tmp_path):
    """Outputs are written with ensure_ascii=False: a kill can cut a line inside a UTF-8 character.
    Every later resume used to fail with a decode error; now the torn line is moved aside and the
    clip captioned again."""
    clips = list_clips(video_dir)[1:3]
    out = tmp_path / "preds.jsonl"
    caption_clips(VideoAssistant(model), clips, out, batch_size=2, max_new_tokens=6, num_workers=0, progress=False)
    rows = lines(out)
    first = json.dumps(rows[0], ensure_ascii=False) + "\n"
    out.write_bytes(first.encode() + '{"video": "clip2", "caption": "café'.encode()[:-1])  # cut inside "é"
    assert read_jsonl_tolerant(out) == rows[:1]
    resumed = caption_clips(
        VideoAssistant(model), clips, out, batch_size=2, max_new_tokens=6, num_workers=0, progress=False
    )
    assert resumed["captioned"] == 1 and resumed["skipped"] == 1
    assert lines(out) == rows
    assert (tmp_path / "preds.jsonl.torn").read_bytes().startswith(b'{"video": "clip2"')


@pytest.mark.parametrize("frames", ["0", "-3", "10000", "abc"])
@pytest.mark.quick
def test_absurd_frames_are_refused_before_any_work(video_dir, tmp_path, capsys, frames):
    """--frames used to be recorded against every clip in the errors file (and 0 silently meant the
    default), so a rerun with a good value skipped them all."""
    out = tmp_path / "preds.jsonl"
    with pytest.raises(SystemExit) as raised:
        cli.main(["caption", "--videos", str(video_dir), "--out", str(out), "--frames", frames])
    assert raised.value.code == 2
    assert "--frames" in capsys.readouterr().err
    assert not out.exists() and not errors_path_for(out).exists()


def test_library_refuses_a_bad_frame_count_before_writing(model, video_dir, tmp_path):
    out = tmp_path / "preds.jsonl"
    for frames in (0, -3, 10000):
        with pytest.raises(ValueError, match="num_frames"):
            caption_clips(
                VideoAssistant(model), list_clips(video_dir), out, num_frames=frames, num_workers=0, progress=False
            )
    assert not out.exists() and not errors_path_for(out).exists()


def test_leftover_parts_of_a_killed_multiprocess_run_are_merged_without_duplicates(model, video_dir, tmp_path):
    clips = list_clips(video_dir)[1:]  # readable clips only
    reference = expected_captions(model, clips)
    out = tmp_path / "preds.jsonl"
    # Process 1 of 2 had finished clips 1 and 3 (the last one twice, e.g. merged halfway) when the run was killed;
    # the output already holds clip 3 from the interrupted merge.
    Path(f"{out}.part-1").write_text(
        "".join(json.dumps({"video": c.id, "caption": reference[c.id]}) + "\n" for c in (clips[1], clips[3]))
    )
    out.write_text(json.dumps({"video": clips[3].id, "caption": reference[clips[3].id]}) + "\n")
    counts = caption_clips(
        VideoAssistant(model), clips, out, batch_size=3, max_new_tokens=6, num_workers=0, progress=False
    )
    assert counts["skipped"] == 2 and counts["captioned"] == 4 and counts["merged"] == 1
    rows = lines(out)
    assert sorted(r["video"] for r in rows) == sorted(c.id for c in clips)  # none lost, none twice
    assert {r["video"]: r["caption"] for r in rows} == reference
    assert not list(tmp_path.glob("*.part-*"))


def test_captions_from_a_feature_cache_equal_captions_from_pixels(model, video_dir, tmp_path):
    from encoder.videoprism.features import FeatureCache, extract_features

    clips = list_clips(video_dir)
    extract_features(
        model.encoder,
        [c.source for c in clips],
        tmp_path / "cache",
        num_frames=FRAMES,
        size=SIZE,
        batch_size=4,
        num_workers=0,
        progress=False,
    )
    cache = FeatureCache(tmp_path / "cache")
    out = tmp_path / "cached.jsonl"
    counts = caption_clips(
        VideoAssistant(model), clips, out, features=cache, batch_size=3, max_new_tokens=6, progress=False
    )
    assert counts["captioned"] == 6 and counts["errors"] == 1
    assert {r["video"]: r["caption"] for r in lines(out)} == expected_captions(model, clips[1:])
    assert "unreadable when the feature cache was built" in lines(tmp_path / "cached.errors.jsonl")[0]["error"]

    missing = caption_clips(
        VideoAssistant(model),
        [Clip("elsewhere", str(tmp_path / "other.mp4"))],
        tmp_path / "m.jsonl",
        features=cache,
        progress=False,
    )
    assert missing["errors"] == 1 and "not in the feature cache" in lines(tmp_path / "m.errors.jsonl")[0]["error"]
    assert sorted(c.id for c in clips_from_feature_cache(cache)) == sorted(["broken", *[f"clip{i}" for i in range(6)]])


def test_hugging_face_dataset_input(model, video_dir, tmp_path):
    import datasets

    paths = [str(video_dir / f"clip{i}.mp4") for i in range(3)]
    with_paths = datasets.Dataset.from_dict({"video_id": ["a", "b", "c"], "video": paths})
    with_paths.save_to_disk(str(tmp_path / "paths"))
    clips = list_clips(tmp_path / "paths")
    assert [c.id for c in clips] == ["a", "b", "c"]

    with_bytes = datasets.Dataset.from_dict(
        {"clip": [{"path": Path(p).name, "bytes": Path(p).read_bytes()} for p in paths]},
        features=datasets.Features({"clip": datasets.Video()}),
    )
    datasets.DatasetDict({"test": with_bytes}).save_to_disk(str(tmp_path / "bytes"))
    byte_clips = list_clips(tmp_path / "bytes", video_column="clip")
    assert [c.id for c in byte_clips] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    for clip, byte_clip in zip(clips, byte_clips):
        np.testing.assert_array_equal(decode_clip(clip, FRAMES, SIZE), decode_clip(byte_clip, FRAMES, SIZE))
    out = tmp_path / "hf.jsonl"
    caption_clips(VideoAssistant(model), byte_clips, out, batch_size=2, max_new_tokens=6, num_workers=0, progress=False)
    assert [r["caption"] for r in lines(out)] == [expected_captions(model, clips)[c.id] for c in clips]
    with pytest.raises(ClipListError, match="no video column 'video'"):
        list_clips(tmp_path / "bytes")


def test_cli_caption_to_file_and_positional_files(glue_dir, video_dir, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    argv = [
        "caption",
        "--videos",
        str(video_dir),
        "--out",
        str(out),
        "--model",
        str(glue_dir),
        "--device",
        "cpu",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["captioned"] == 6 and summary["errors"] == 1
    assert len(lines(out)) == 6 and len(lines(tmp_path / "cli.errors.jsonl")) == 1
    assert cli.main(argv) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 7

    files = [str(video_dir / "clip0.mp4"), str(video_dir / "clip1.mp4")]
    assert (
        cli.main(["caption", *files, "--model", str(glue_dir), "--device", "cpu", "--max-new-tokens", "6", "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert [p["video"] for p in printed] == files
    assert [p["caption"] for p in printed] == [r["caption"] for r in lines(out)[:2]]
    assert cli.main(["caption", "--videos", str(video_dir), "--model", str(glue_dir)]) == 2
    assert "give --out FILE" in capsys.readouterr().err


def test_accelerate_launch_two_processes_merges_to_the_single_process_output(glue_dir, video_dir, tmp_path):
    common = [
        "caption",
        "--videos",
        str(video_dir),
        "--model",
        str(glue_dir),
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert cli.main([*common, "--out", str(tmp_path / "single.jsonl"), "--device", "cpu"]) == 0
    # accelerate launches several CPU processes through torchrun (its --multi_gpu launcher); its --cpu
    # launcher needs MPI for more than one. Without CUDA the command runs them on CPU with gloo.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    launch = two_process_command(*common, "--out", str(tmp_path / "sharded.jsonl"))
    result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "sharded.jsonl").read_text() == (tmp_path / "single.jsonl").read_text()
    assert (tmp_path / "sharded.errors.jsonl").read_text() == (tmp_path / "single.errors.jsonl").read_text()
    assert not list(tmp_path.glob("*.part-*"))
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # printed once, by the main process
    assert summary["captioned"] + summary["errors"] in (3, 4) and summary["merged"] == 6


@pytest.mark.quick
def test_a_second_run_on_the_same_output_is_refused(model, video_dir, tmp_path):
    from filelock import FileLock

    from vlm.inference.batch_caption import OutputBusyError

    out = tmp_path / "preds.jsonl"
    with FileLock(f"{out}.lock-0"):  # another run holds the output
        with pytest.raises(OutputBusyError, match="being written by another run"):
            caption_clips(VideoAssistant(model), list_clips(video_dir), out, num_workers=0, progress=False)
    assert not out.exists()
    counts = caption_clips(
        VideoAssistant(model), list_clips(video_dir)[1:3], out, max_new_tokens=4, num_workers=0, progress=False
    )
    assert counts["captioned"] == 2
