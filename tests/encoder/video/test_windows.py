"""Tests for encoder.video.windows: window spans, streaming windows equal to load_clip, resuming,
damaged files, budgets and bounded memory.

The long videos are code videos (tests.helpers.video_factory): frame ``i`` shows ``i`` as a binary
code, so the frame a window holds at each sampled time can be read back exactly (10 fps: frame
``i`` is shown from ``i / 10`` s).
"""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path

import av
import numpy as np
import pytest

import encoder.video.decode as video
from encoder.common.errors import PrismVlmError
from encoder.video.decode import VideoDecodeError, load_clip
from encoder.video.windows import (
    MAX_LISTED_WINDOWS,
    VideoWindow,
    WindowDecodeError,
    WindowError,
    _iter_windows_with_stats,
    iter_windows,
    video_window_spans,
    window_spans,
)
from tests.helpers.fixture_files import REAL_CLIP
from tests.helpers.video_factory import corrupted_copy, read_code, truncated_copy, write_code_video

FPS = 10
SECONDS = 50
GOP = 2 * FPS  # a keyframe every 2 s


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory) -> Path:
    """50 s, 10 fps H.264 mp4 (index at the front, so a cut file still opens), keyframe every 2 s."""
    path = tmp_path_factory.mktemp("windows") / "long.mp4"
    return write_code_video(path, SECONDS * FPS, fps=FPS, gop=GOP, container_options={"movflags": "faststart"})


@pytest.fixture(scope="module")
def long_mkv(tmp_path_factory) -> Path:
    """The same frames in Matroska."""
    return write_code_video(tmp_path_factory.mktemp("windows") / "long.mkv", SECONDS * FPS, fps=FPS, gop=GOP)


@pytest.fixture(scope="module")
def long_ts(tmp_path_factory) -> Path:
    """The same frames in MPEG-TS (no complete keyframe index: seeks only when far ahead)."""
    return write_code_video(tmp_path_factory.mktemp("windows") / "long.ts", SECONDS * FPS, fps=FPS, gop=GOP)


def codes(clip: np.ndarray) -> list[int]:
    """Frame indices shown by a native-size float clip."""
    return [read_code(np.round(frame * 255).astype(np.uint8)) for frame in clip]


def displayed(times: np.ndarray) -> list[int]:
    return [math.floor(t * FPS + 1e-9) for t in times]


# ----------------------------------------------------------------------------- spans


@pytest.mark.quick
@pytest.mark.parametrize(
    "duration, window, expected",
    [
        (50.0, 8.0, [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 50)]),  # 2 s left < 4: merged
        (44.0, 8.0, [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 44)]),  # 4 s left = half: kept
        (16.0, 8.0, [(0, 8), (8, 16)]),  # nothing left over
        (5.0, 8.0, [(0, 5)]),  # shorter than one window
        (11.9, 8.0, [(0, 11.9)]),  # 3.9 s left over, merged into the only window
        (12.0, 8.0, [(0, 8), (8, 12)]),
        (1.0, 0.3, [(0, 0.3), (0.3, 0.6), (0.6, 1.0)]),
    ],
)
def test_window_spans_rule(duration, window, expected):
    spans = window_spans(duration, window)
    assert len(spans) == len(expected)
    assert np.allclose(spans, expected, rtol=0, atol=1e-12)
    assert spans[0][0] == 0.0 and spans[-1][1] == duration
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # consecutive, no gap
    assert all(window / 2 <= end - start < 1.5 * window for start, end in spans[1:])


@pytest.mark.quick
@pytest.mark.parametrize("window_s", [0, -8, 0.01, float("nan"), float("inf"), "8", None, True])
def test_bad_window_s_is_a_clear_error(long_mp4, window_s):
    for call in (lambda: window_spans(50.0, window_s), lambda: iter_windows(long_mp4, window_s)):
        with pytest.raises(WindowError, match="window_s") as caught:
            call()
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, PrismVlmError)


@pytest.mark.quick
def test_bad_arguments_fail_at_the_call(long_mp4, tmp_path):
    with pytest.raises(WindowError, match="start_index"):
        iter_windows(long_mp4, start_index=-1)
    with pytest.raises(WindowError, match="max_windows"):
        iter_windows(long_mp4, max_windows=1.5)
    with pytest.raises(WindowError, match="on_window"):
        iter_windows(long_mp4, on_window="print")
    with pytest.raises(ValueError, match="num_frames"):
        iter_windows(long_mp4, num_frames=0)
    with pytest.raises(ValueError, match="time_limit_s"):
        iter_windows(long_mp4, time_limit_s=0)
    with pytest.raises(FileNotFoundError):
        iter_windows(tmp_path / "missing.mp4")
    with pytest.raises(WindowError, match="image file"):
        iter_windows(tmp_path / "still.png")
    with pytest.raises(WindowError, match="duration_s"):
        window_spans(float("nan"), 8.0)
    with pytest.raises(WindowError, match="more than"):
        window_spans(1.0 * MAX_LISTED_WINDOWS, 0.5)


# ----------------------------------------------------------------------------- windows = load_clip


@pytest.mark.quick
@pytest.mark.parametrize(
    "fixture, window_s, num_frames",
    [
        ("long_mp4", 8.0, 8),  # 80 frames a window for 8 samples: seeks between samples
        ("long_mkv", 8.0, 8),
        ("long_ts", 8.0, 8),
        ("long_mp4", 3.0, 16),  # 30 frames a window for 16 samples: decoded forward
    ],
)
def test_each_window_equals_load_clip_on_its_span(request, fixture, window_s, num_frames):
    path = request.getfixturevalue(fixture)
    windows = list(iter_windows(path, window_s, num_frames, size=32))
    assert [(w.start, w.end) for w in windows] == video_window_spans(path, window_s)
    assert np.allclose([(w.start, w.end) for w in windows], window_spans(SECONDS, window_s), atol=0.2)
    assert [w.index for w in windows] == list(range(len(windows)))
    for window in windows:
        assert isinstance(window, VideoWindow)
        assert window.clip.shape == (num_frames, 32, 32, 3) and window.clip.dtype == np.float32
        np.testing.assert_array_equal(window.clip, load_clip(path, num_frames, 32, start=window.start, end=window.end))


@pytest.mark.quick
def test_real_video_windows_equal_load_clip():
    """The official demo clip (H.264, 12 fps, 8.3 s) in 2-s windows: nothing flagged as damage."""
    records = list(_iter_windows_with_stats(REAL_CLIP, 2.0, 16, size=64))
    assert len(records) == 4
    for window, stats in records:
        assert not stats.damaged
        np.testing.assert_array_equal(window.clip, load_clip(REAL_CLIP, 16, 64, start=window.start, end=window.end))


@pytest.mark.quick
def test_windows_hold_the_frames_displayed_at_their_sampled_times(long_mp4):
    for window, stats in _iter_windows_with_stats(long_mp4, 8.0, 8, size=None):
        assert window.clip.shape == (8, 48, 64, 3)
        assert np.allclose(stats.times, window.start + (np.arange(8) + 0.5) * (window.end - window.start) / 8)
        assert codes(window.clip) == displayed(stats.times)


@pytest.mark.quick
def test_the_file_is_opened_once_and_read_forward(long_mp4, monkeypatch):
    opened = []
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda path, *args: opened.append(path) or real_open(path, *args))
    records = list(_iter_windows_with_stats(long_mp4, 8.0, 8, size=32))
    assert len(opened) == 1
    # In all, about the file's frames once (each window continues where the previous one stopped;
    # seeks only skip ahead), where reopening per window would start every window with a seek.
    assert sum(stats.frames_decoded for _, stats in records) <= SECONDS * FPS
    assert not any(stats.seeking_stopped or stats.damaged for _, stats in records)


@pytest.mark.quick
def test_a_video_shorter_than_a_window_is_one_window(tmp_path):
    path = write_code_video(tmp_path / "short.mp4", 30, fps=FPS)
    (window,) = iter_windows(path, 8.0, 4, size=16)
    assert (window.index, window.start, window.end) == (0, 0.0, 3.0)
    np.testing.assert_array_equal(window.clip, load_clip(path, 4, 16))
    assert video_window_spans(path, 8.0) == [(0.0, 3.0)]


# ----------------------------------------------------------------------------- resuming, progress


@pytest.mark.quick
def test_start_index_resumes_without_decoding_the_earlier_part(long_mp4):
    everything = list(iter_windows(long_mp4, 8.0, 8, size=32))
    resumed = list(_iter_windows_with_stats(long_mp4, 8.0, 8, size=32, start_index=3))
    assert [w.index for w, _ in resumed] == [3, 4, 5]
    for window, _ in resumed:
        np.testing.assert_array_equal(window.clip, everything[window.index].clip)
    first_stats = resumed[0][1]
    assert first_stats.seeks >= 1
    assert first_stats.frames_decoded <= 8 * FPS + GOP  # its own window (+ a keyframe interval), not 24 s before it

    two = list(iter_windows(long_mp4, 8.0, 8, size=32, start_index=3, max_windows=2))
    assert [w.index for w in two] == [3, 4]
    assert list(iter_windows(long_mp4, 8.0, 8, size=32, start_index=6)) == []
    assert list(iter_windows(long_mp4, 8.0, 8, size=32, max_windows=0)) == []


@pytest.mark.quick
def test_progress_hook_and_early_stop(long_mp4):
    calls = []
    windows = iter_windows(
        long_mp4, 8.0, 4, size=16, start_index=1, on_window=lambda done, total: calls.append((done, total))
    )
    assert next(windows).index == 1 and calls == [(1, 5)]
    assert next(windows).index == 2 and calls == [(1, 5), (2, 5)]
    windows.close()  # stopping early closes the file
    assert calls == [(1, 5), (2, 5)]
    list(iter_windows(long_mp4, 8.0, 4, size=16, on_window=lambda done, total: calls.append((done, total))))
    assert calls[2:] == [(i, 6) for i in range(1, 7)]


# ----------------------------------------------------------------------------- damaged files


@pytest.mark.quick
@pytest.mark.parametrize("fixture", ["long_mp4", "long_mkv"])
def test_truncated_file_yields_the_whole_windows_then_a_clear_error(request, tmp_path, fixture):
    path = request.getfixturevalue(fixture)
    cut = truncated_copy(path, tmp_path / f"cut{path.suffix}", 0.5)
    everything = list(iter_windows(path, 8.0, 8, size=32))
    got = []
    with pytest.raises(WindowDecodeError) as caught:
        for window in iter_windows(cut, 8.0, 8, size=32):
            got.append(window)
    error = caught.value
    assert isinstance(error, VideoDecodeError)
    assert str(cut) in str(error) and f"{error.failed_at:.2f}s" in str(error)
    # The file holds about half of the frames: the windows before the cut, exactly, and no partial one.
    assert 2 <= len(got) <= 3 and error.index == len(got)
    for window in got:
        np.testing.assert_array_equal(window.clip, everything[window.index].clip)
    assert got[-1].end <= error.failed_at + 1.0 < error.end + 1.0
    # Resuming past the cut: nothing there either.
    with pytest.raises(WindowDecodeError):
        list(iter_windows(cut, 8.0, 8, size=32, start_index=error.index + 1))


@pytest.mark.quick
@pytest.mark.parametrize("fixture", ["long_mp4", "long_mkv"])
def test_garbage_in_the_middle_stops_at_the_damage_and_resumes_after_it(request, tmp_path, fixture):
    """The decoder reports the damage (undecodable packets in the mp4, a frame flagged corrupt and lost
    packets in the mkv): the windows before it come out exact, the window it hits raises, and a
    reader resuming after it seeks past the damage."""
    path = request.getfixturevalue(fixture)
    bad = corrupted_copy(path, tmp_path / f"bad{path.suffix}", at=0.5)
    everything = list(iter_windows(path, 8.0, 8, size=32))
    got = []
    with pytest.raises(WindowDecodeError) as caught:
        for window in iter_windows(bad, 8.0, 8, size=32):
            got.append(window)
    error = caught.value
    assert error.index == len(got) >= 2 and error.start <= error.failed_at < error.end
    for window in got:
        np.testing.assert_array_equal(window.clip, everything[window.index].clip)
    after = list(iter_windows(bad, 8.0, 8, size=32, start_index=error.index + 1))
    assert [w.index for w in after] == list(range(error.index + 1, len(everything)))
    for window in after:
        np.testing.assert_array_equal(window.clip, everything[window.index].clip)


# ----------------------------------------------------------------------------- budgets and memory


@pytest.mark.quick
def test_budgets_apply_per_window(tmp_path, monkeypatch):
    """A header claiming 1 fps bounds each window's work: twice the frames it announces up to the
    window's end (here 2 * 4 = 8 for the first 4-s window of a 100 fps file)."""
    path = write_code_video(tmp_path / "many.mp4", 800, fps=100)
    real = video._stream_info

    def lying(container, stream, path, *args):
        info = real(container, stream, path, *args)
        info.fps = 1.0
        return info

    with pytest.raises(VideoDecodeError, match="time limit"):
        next(iter_windows(path, 4.0, 4, size=16, time_limit_s=1e-9))
    monkeypatch.setattr(video, "_stream_info", lying)
    monkeypatch.setattr(video, "MIN_FRAME_BUDGET", 5)
    with pytest.raises(VideoDecodeError, match="more than 8 frames"):
        next(iter_windows(path, 4.0, 4, size=16))


@pytest.mark.quick
def test_memory_holds_one_window_of_frames(long_mp4, monkeypatch):
    """Every converted frame is tracked: while a window is handed out, at most its own ``num_frames``
    converted (and already resized) frames are alive, whatever the length of the video."""
    live: list[weakref.ref] = []
    real_call = video._Converter.__call__

    def tracking(self, frame):
        array = real_call(self, frame)
        live.append(weakref.ref(array))
        return array

    monkeypatch.setattr(video._Converter, "__call__", tracking)
    num_frames, windows = 8, 0
    for window, stats in _iter_windows_with_stats(long_mp4, 4.0, num_frames, size=16):
        alive = [ref() for ref in live if ref() is not None]
        assert len(alive) <= num_frames
        assert all(array.shape == (16, 16, 3) for array in alive)
        assert stats.frames_converted <= num_frames
        assert stats.frames_decoded <= 4 * FPS + GOP
        windows += 1
        del window, alive
    assert windows == len(window_spans(SECONDS, 4.0)) == 13 and len(live) == 13 * num_frames


@pytest.mark.quick
def test_no_decoded_frame_outlives_its_window_without_the_garbage_collector(long_mp4):
    """Decoded frames are freed as soon as they are passed, not when the cyclic garbage collector gets
    round to them (``frame.side_data`` makes a cycle that kept every converted native frame alive)."""

    def live_frames() -> int:
        return sum(isinstance(obj, av.VideoFrame) for obj in gc.get_objects())

    gc.collect()
    before = live_frames()
    gc.disable()
    try:
        counts = [live_frames() - before for _ in iter_windows(long_mp4, 4.0, 8, size=16)]
    finally:
        gc.enable()
    assert len(counts) == 13 and max(counts) <= 4  # the cursor's frame on screen and the one ahead
