"""Hostile files against the decoder (tests/helpers/hostile_media.py builds them): each is refused, or
read, within bounded memory and time, with a clear reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import encoder.video.decode as video
from encoder.video import mp4_boxes
from encoder.video.decode import VideoDecodeError, load_clip
from tests.helpers import hostile_media

REPO = Path(__file__).resolve().parents[3]


def _peak_mb_decoding(path: Path, **kwargs) -> dict:
    """Decode ``path`` with load_clip in a fresh process. -> {"outcome", "peak_mb"} where peak_mb is the peak
    resident memory over the process's footprint just before the call."""
    code = """
import json, sys
from pathlib import Path
import numpy as np
from encoder.video.decode import VideoDecodeError, load_clip
def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
load_clip(np.zeros((2, 8, 8, 3), np.uint8), num_frames=2, size=8)
before = peak()
try:
    load_clip(sys.argv[1], **json.loads(sys.argv[2]))
    outcome = "read"
except VideoDecodeError as error:
    outcome = "refused: " + error.reason
print(json.dumps({"outcome": outcome, "peak_mb": peak() - before}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), json.dumps(kwargs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.quick
def test_a_raw_h264_stream_named_mp4_is_not_opened(tmp_path):
    """FFmpeg's raw h264 demuxer buffered gigabytes of empty access units while opening it."""
    path = hostile_media.raw_h264_named_mp4(tmp_path / "raw.mp4", delimiters=100_000)
    with pytest.raises(VideoDecodeError, match="not a video container this reader opens"):
        load_clip(path, 4, size=16)


@pytest.mark.quick
def test_declared_samples_without_data_are_refused_before_indexing(tmp_path):
    """50 million one-byte samples declared by a 1 KB file: the mov demuxer used to index them all (GBs)."""
    path = hostile_media.sample_count_mp4(tmp_path / "samples.mp4", samples=50_000_000)
    assert path.stat().st_size < 2000
    with pytest.raises(VideoDecodeError, match="impossible sample tables: .*50000000 samples of 1 bytes"):
        load_clip(path, 4, size=16)


@pytest.mark.quick
def test_more_frames_than_the_duration_allows_are_refused(tmp_path):
    """Data enough for every sample, but 20,000 frames in 20 ms of track time."""
    path = hostile_media.sample_count_mp4(tmp_path / "fast.mp4", samples=20_000, data_bytes=20_000)
    problem = mp4_boxes.declared_sample_problem(path)
    assert problem is not None and "frames per second" in problem
    with pytest.raises(VideoDecodeError, match="frames per second"):
        load_clip(path, 4, size=16)


@pytest.mark.quick
def test_too_many_samples_in_all_are_refused(tmp_path, monkeypatch):
    path = hostile_media.sample_count_mp4(
        tmp_path / "many.mp4", samples=5000, data_bytes=5000, timescale=1000, ticks_per_sample=40
    )
    assert mp4_boxes.declared_sample_problem(path) is None  # 25 fps, data for each: a plausible file
    assert "more than the 4000" in mp4_boxes.declared_sample_problem(path, max_samples=4000)


@pytest.mark.quick
def test_real_mp4_files_pass_the_sample_check(tmp_path):
    from tests.helpers.video_factory import write_code_video

    for name, options in (("plain.mp4", {}), ("fragmented.mp4", {"movflags": "frag_keyframe+empty_moov"})):
        path = write_code_video(tmp_path / name, 50, container_options=options)
        assert mp4_boxes.declared_sample_problem(path) is None
        assert load_clip(path, 4, size=16).shape == (4, 16, 16, 3)
    assert mp4_boxes.declared_sample_problem(hostile_media.delimiter_packets_mkv(tmp_path / "x.mkv", 10)) is None


def test_huge_frames_after_a_small_header_are_never_decoded(tmp_path):
    """An mkv announcing 64x64 MJPEG whose later frames are 16000x16000 grey JPEGs (12 MB on disk, 256 MB
    decoded each): the decoder refuses them before allocating (the clip comes from the small frames)."""
    path = hostile_media.size_switch_mjpeg_mkv(tmp_path / "switch.mkv", side=16_000)
    result = _peak_mb_decoding(path, num_frames=8, size=32, max_side=4096)
    assert result["outcome"] == "read"
    assert result["peak_mb"] < 100, result


@pytest.mark.quick
def test_packets_that_decode_to_nothing_end_decoding(tmp_path, monkeypatch):
    """Packets the decoder takes without complaint and without a frame (a stand-in container: real empty
    packets make FFmpeg's decoders complain, which the error budget already bounds)."""
    import numpy as np

    class EmptyPacket:
        def decode(self):
            return []

    class Container:
        def demux(self, stream):
            return (EmptyPacket() for _ in range(5000))

    monkeypatch.setattr(video, "MAX_FRAMELESS_PACKETS", 1000)
    info = video._StreamInfo(start=0.0, duration=1.0, fps=10.0, can_seek=False, indexed=False)
    cursor = video._FrameCursor(Container(), None, info, video._DecodeStats(times=np.zeros(1)), tmp_path / "x.mkv")
    with pytest.raises(VideoDecodeError, match="1000 packets in a row decoded to no frame"):
        cursor.frame_at(0.5)


@pytest.mark.quick
def test_the_deadline_holds_in_the_scan_of_a_recording_without_duration(tmp_path):
    """A live recording of empty packets has no duration in its header, so the decoder measures it from
    its packets first: that scan is bounded by the clip's deadline and a packet budget too."""
    path = hostile_media.delimiter_packets_mkv(tmp_path / "live.mkv", packets=20_000)
    with pytest.raises(VideoDecodeError, match="scanning its packets took longer than its time limit"):
        load_clip(path, 4, size=16, time_limit_s=1e-6)
    with video.open_video(path) as container:
        with pytest.raises(VideoDecodeError, match="more than 100 video packets"):
            video.packet_time_span(container, video.video_stream(container, path), max_packets=100)
