"""Feature extraction and the on-disk cache: correctness, errors, resume, and resume after SIGKILL."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

from encoder.video.clips import list_videos
from encoder.video.decode import load_clip
from encoder.videoprism.features import FeatureCache, encode_clips, extract_features
from encoder.videoprism.loading import load_encoder
from tests.helpers.tiny_glue import write_clip

REPO = Path(__file__).resolve().parents[3]
FRAMES, SIZE = 4, 36


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = VideoPrismVisionConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_spatial_layers=1,
        num_temporal_layers=1,
        image_size=SIZE,
        num_frames=FRAMES,
    )
    path = tmp_path_factory.mktemp("tiny_encoder")
    VideoPrismVisionModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "nested").mkdir()
    for i in range(5):
        write_clip((root / "nested" if i % 2 else root) / f"clip{i}.mp4", seed=i, frames=8)
    (root / "corrupt.mp4").write_bytes(b"\x00\x01 this is not a video" * 50)
    (root / "notes.txt").write_text("not a video, not listed")
    return root


def test_cached_tokens_equal_direct_encoding(tmp_path, tiny_encoder_dir, video_dir):
    model = load_encoder(tiny_encoder_dir)
    videos = list_videos(video_dir)
    assert len(videos) == 6 and not any(v.endswith(".txt") for v in videos)

    counts = extract_features(
        model,
        videos,
        tmp_path / "cache",
        num_frames=FRAMES,
        size=SIZE,
        batch_size=2,
        shard_size=3,
        num_workers=2,
        progress=False,
    )
    assert counts == {"encoded": 5, "skipped": 0, "errors": 1}
    cache = FeatureCache(tmp_path / "cache")
    assert len(cache) == 5 and str(video_dir / "corrupt.mp4") in cache.errors
    assert "corrupt.mp4" in cache.errors[str(video_dir / "corrupt.mp4")]
    assert len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == 2  # 3 + 2 rows
    for video in cache.videos:
        direct = encode_clips(model, load_clip(video, num_frames=FRAMES, size=SIZE)[None])[0]
        assert cache.get(video).shape == (FRAMES * (SIZE // 18) ** 2, 32)
        torch.testing.assert_close(cache.get(video), direct, atol=1e-6, rtol=0)

    again = extract_features(model, videos, tmp_path / "cache", num_frames=FRAMES, size=SIZE, progress=False)
    assert again == {"encoded": 0, "skipped": 6, "errors": 0}

    with pytest.raises(ValueError, match="different settings"):
        extract_features(model, videos, tmp_path / "cache", num_frames=FRAMES + 1, size=SIZE, progress=False)


def test_manifest_input_and_missing_files(tmp_path, tiny_encoder_dir, video_dir):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"video": str(video_dir / "clip0.mp4"), "caption": "x"})
        + "\n"
        + json.dumps({"video": "missing.mp4"})
        + "\n"
    )
    videos = list_videos(manifest)
    assert videos == [str(video_dir / "clip0.mp4"), str(tmp_path / "missing.mp4")]
    counts = extract_features(
        load_encoder(tiny_encoder_dir),
        videos,
        tmp_path / "cache",
        num_frames=FRAMES,
        size=SIZE,
        num_workers=0,
        progress=False,
    )
    assert counts == {"encoded": 1, "skipped": 0, "errors": 1}
    assert "FileNotFoundError" in FeatureCache(tmp_path / "cache").errors[str(tmp_path / "missing.mp4")]
    with pytest.raises(FileNotFoundError):
        list_videos(tmp_path / "nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "x.mp4"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: 'video' must be a non-empty path string, got None"):
        list_videos(bad)


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, tiny_encoder_dir, video_dir):
    """A run killed with SIGKILL mid-way, then resumed, ends with every clip cached exactly once and
    the same tokens as an uninterrupted run."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from encoder.video.clips import list_videos
        from encoder.videoprism.features import extract_features
        from encoder.videoprism.loading import load_encoder
        kill_after = int(sys.argv[1])
        def on_batch(done):
            if kill_after and done >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        extract_features(load_encoder({str(tiny_encoder_dir)!r}), list_videos({str(video_dir)!r}), sys.argv[2],
                         num_frames={FRAMES}, size={SIZE}, batch_size=1, shard_size=2, num_workers=0,
                         progress=False, on_batch=on_batch)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script, "3", str(tmp_path / "cache")], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()
    partial = FeatureCache(tmp_path / "cache")
    assert 0 < len(partial) < 5  # some clips were cached before the kill, not all

    resumed = subprocess.run([sys.executable, "-c", script, "0", str(tmp_path / "cache")], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()
    clean = subprocess.run([sys.executable, "-c", script, "0", str(tmp_path / "clean")], capture_output=True)
    assert clean.returncode == 0, clean.stderr.decode()

    index = [json.loads(line) for line in (tmp_path / "cache" / "index.jsonl").read_text().splitlines()]
    assert sorted(row["video"] for row in index) == sorted(FeatureCache(tmp_path / "clean").videos)
    assert len(index) == 5  # no clip twice
    assert not list((tmp_path / "cache").glob(".*.tmp-*"))  # no temporary file of an atomic write left
    resumed_cache, clean_cache = FeatureCache(tmp_path / "cache"), FeatureCache(tmp_path / "clean")
    for video in clean_cache.videos:
        torch.testing.assert_close(resumed_cache.get(video), clean_cache.get(video), atol=0, rtol=0)


@pytest.mark.slow
def test_features_cli(tmp_path, tiny_encoder_dir, video_dir):
    cmd = [
        sys.executable,
        "-m",
        "vlm.cli.main",
        "features",
        "--encoder",
        str(tiny_encoder_dir),
        "--videos",
        str(video_dir),
        "--out",
        str(tmp_path / "cache"),
        "--frames",
        str(FRAMES),
        "--size",
        str(SIZE),
        "--workers",
        "0",
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"encoded": 5, "skipped": 0, "errors": 1}
    assert "errors.jsonl" in done.stderr
    missing = subprocess.run(cmd[:7] + [str(tmp_path / "none")] + cmd[8:], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "no such folder" in missing.stderr


@pytest.mark.parametrize(
    "flag, value", [("--frames", "0"), ("--frames", "-3"), ("--size", "0"), ("--batch-size", "0"), ("--workers", "-1")]
)
def test_features_cli_refuses_absurd_flags_before_writing(tmp_path, tiny_encoder_dir, video_dir, capsys, flag, value):
    """`features --frames 0` used to write a meta.json that then errored every clip."""
    from vlm.cli import main as cli

    out = tmp_path / "cache"
    with pytest.raises(SystemExit) as raised:
        cli.main(
            ["features", "--encoder", str(tiny_encoder_dir), "--videos", str(video_dir), "--out", str(out), flag, value]
        )
    assert raised.value.code == 2 and flag in capsys.readouterr().err
    assert not out.exists()


def test_extract_features_refuses_a_bad_frame_count_before_writing(tmp_path, tiny_encoder_dir, video_dir):
    model = load_encoder(tiny_encoder_dir)
    for frames, size in ((0, SIZE), (-2, SIZE), (FRAMES, 0)):
        with pytest.raises(ValueError):
            extract_features(
                model, list_videos(video_dir), tmp_path / "cache", num_frames=frames, size=size, progress=False
            )
    assert not (tmp_path / "cache").exists()


def test_encode_clips_checks_shapes(tiny_encoder_dir):
    model = load_encoder(tiny_encoder_dir)
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        encode_clips(model, np.zeros((FRAMES, SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match="precision"):
        encode_clips(model, np.zeros((1, FRAMES, SIZE, SIZE, 3), np.float32), precision="int8")


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"video": "a.mp4"}\n{"video": 5}\n', "rows.jsonl:2: 'video' must be a non-empty path string, got 5"),
        (b'{"video": null}\n', "rows.jsonl:1: 'video' must be a non-empty path string, got None"),
        (b'{"video": "a.mp4"}\n{"video": "caf\xe9.mp4"}\n', "rows.jsonl:2: not UTF-8 text"),
        (b"", "rows.jsonl: lists no videos"),
        (b"\n\n", "rows.jsonl: lists no videos"),
    ],
)
def test_bad_manifests_name_file_and_line_before_the_encoder_loads(tmp_path, capsys, content, message):
    from vlm.cli import main as cli

    manifest = tmp_path / "rows.jsonl"
    manifest.write_bytes(content)
    with pytest.raises(ValueError) as error:
        list_videos(manifest)
    assert message in str(error.value)
    # The CLI says the same, without loading the (here missing) encoder first.
    assert (
        cli.main(
            [
                "features",
                "--encoder",
                str(tmp_path / "no-model"),
                "--videos",
                str(manifest),
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no video files"):
        list_videos(tmp_path)


def test_a_second_writer_is_refused(tmp_path, tiny_encoder_dir, video_dir):
    from filelock import FileLock

    from encoder.videoprism.features import LOCK_FILE, CacheBusyError

    model = load_encoder(tiny_encoder_dir)
    (tmp_path / "cache").mkdir()
    with FileLock(str(tmp_path / "cache" / LOCK_FILE)):  # another run is writing
        with pytest.raises(CacheBusyError, match="being written by another process"):
            extract_features(
                model, list_videos(video_dir), tmp_path / "cache", num_frames=FRAMES, size=SIZE, progress=False
            )
    counts = extract_features(
        model, list_videos(video_dir), tmp_path / "cache", num_frames=FRAMES, size=SIZE, num_workers=0, progress=False
    )
    assert counts["encoded"] == 5


def test_resume_re_encodes_the_clips_of_a_shard_lost_to_a_power_cut(tmp_path, tiny_encoder_dir, video_dir):
    """The index can outlive its shard (written, renamed, then lost before reaching the disk): the
    resume drops those index lines, keeps the damaged file aside and encodes the clips again."""
    model = load_encoder(tiny_encoder_dir)
    videos = list_videos(video_dir)
    cache_dir = tmp_path / "cache"
    extract_features(
        model, videos, cache_dir, num_frames=FRAMES, size=SIZE, shard_size=3, num_workers=0, progress=False
    )
    reference = {video: FeatureCache(cache_dir).get(video).clone() for video in FeatureCache(cache_dir).videos}
    (cache_dir / "shard-00000.safetensors").write_bytes(b"")  # empty after the power cut
    counts = extract_features(
        model, videos, cache_dir, num_frames=FRAMES, size=SIZE, shard_size=3, num_workers=0, progress=False
    )
    assert counts == {"encoded": 3, "skipped": 3, "errors": 0}
    assert (cache_dir / "shard-00000.safetensors.corrupt").exists()
    cache = FeatureCache(cache_dir)
    assert sorted(cache.videos) == sorted(reference)
    for video, tokens in reference.items():
        torch.testing.assert_close(cache.get(video), tokens)
    lines = (cache_dir / "index.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["shard"] != "shard-00000.safetensors" for line in lines)


def test_an_aborted_run_keeps_the_clips_encoded_so_far(tmp_path, tiny_encoder_dir, video_dir, monkeypatch):
    """With shards of 256, the clips of an interrupted run used to stay in memory and be lost."""
    import encoder.videoprism.features as features

    model = load_encoder(tiny_encoder_dir)
    real, calls = features.encode_clips, []

    def failing_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "encode_clips", failing_second_time)
    videos = [v for v in list_videos(video_dir) if not v.endswith("corrupt.mp4")]
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            model, videos, tmp_path / "cache", num_frames=FRAMES, size=SIZE, batch_size=2, num_workers=0, progress=False
        )
    assert len(FeatureCache(tmp_path / "cache")) == 2  # the first batch is on disk
    monkeypatch.setattr(features, "encode_clips", real)
    counts = extract_features(
        model, videos, tmp_path / "cache", num_frames=FRAMES, size=SIZE, batch_size=2, num_workers=0, progress=False
    )
    assert counts == {"encoded": 3, "skipped": 2, "errors": 0}
