"""Tests for encoder.video.decode: sampling, seeking, formats, orientation, damaged files, inputs."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.sidedata.sidedata import Type as SideDataType
from PIL import Image

from encoder.video.decode import (
    MAX_NUM_FRAMES,
    MAX_SIZE,
    VideoDecodeError,
    _decode_frames_with_stats,
    center_crop,
    decode_frames,
    load_clip,
    resize_shorter_side,
    sample_times,
)
from tests.helpers.fixture_files import REAL_CLIP as REAL_VIDEO
from tests.helpers.video_factory import (
    BRIGHT,
    DARK,
    PATCH_COLOURS,
    code_frame,
    decode_all,
    displayed_index,
    quadrant_frame,
    read_code,
    read_patch_colours,
    write_audio_only,
    write_code_video,
    write_resolution_switch,
    write_single_keyframe_video,
    write_video,
)


def codes(frames: list[np.ndarray]) -> list[int]:
    return [read_code(f) for f in frames]


def cfr_expected(times: np.ndarray, fps: float) -> list[int]:
    """Index of the frame displayed at each time in a constant-rate clip starting at 0."""
    return [int(math.floor(t * fps + 1e-9)) for t in times]


# ----------------------------------------------------------------------------- the real video


@pytest.fixture(scope="module")
def real_video() -> Path:
    if not REAL_VIDEO.exists():
        pytest.fail(f"fixture video missing: {REAL_VIDEO}")
    return REAL_VIDEO


@pytest.fixture(scope="module")
def real_video_reference(real_video) -> tuple[list[float], list[np.ndarray]]:
    """Every frame of the real video, decoded in order (times in seconds, RGB frames)."""
    return decode_all(real_video)


@pytest.fixture(scope="module")
def minute_clip(tmp_path_factory) -> Path:
    """60 s, 10 fps H.264 mp4 of code frames with a keyframe every 2 s."""
    return write_code_video(tmp_path_factory.mktemp("minute") / "minute.mp4", 600, fps=10, gop=20)


def test_real_video_clip_shape_dtype_range(real_video):
    clip = load_clip(real_video)
    assert clip.shape == (16, 288, 288, 3)
    assert clip.dtype == np.float32
    assert 0.0 <= clip.min() and clip.max() <= 1.0
    assert clip.std() > 0.05  # not blank
    # Frames change over time (the drumming moves), and neighbours differ less than far frames.
    diffs = np.abs(clip[1:] - clip[:-1]).mean(axis=(1, 2, 3))
    assert (diffs > 0).sum() >= 12
    assert np.abs(clip[-1] - clip[0]).mean() > 0.01


def test_real_video_matches_decode_everything_reference(real_video, real_video_reference):
    frames, stats = _decode_frames_with_stats(real_video, 16)
    ref_times, ref_frames = real_video_reference
    assert len(frames) == 16
    assert stats.frames_converted <= 16
    for t, frame in zip(stats.times, frames):
        expected = ref_frames[displayed_index(ref_times, t)]
        assert frame.shape == expected.shape == (512, 512, 3)
        assert np.abs(frame.astype(np.float32) - expected).mean() < 2.0  # < 2/255 in [0, 1] units
    # load_clip is decode_frames + resize + centre crop.
    clip = load_clip(real_video, num_frames=16, size=None)
    assert clip.shape == (16, 512, 512, 3)
    np.testing.assert_allclose(clip, np.stack(frames).astype(np.float32) / 255, atol=1e-6)


@pytest.mark.quick
def test_real_video_window(real_video, real_video_reference):
    frames, stats = _decode_frames_with_stats(real_video, 4, start=2.0, end=4.0)
    np.testing.assert_allclose(stats.times, [2.25, 2.75, 3.25, 3.75])
    ref_times, ref_frames = real_video_reference
    for t, frame in zip(stats.times, frames):
        assert np.abs(frame.astype(np.float32) - ref_frames[displayed_index(ref_times, t)]).mean() < 2.0


# ----------------------------------------------------------------------------- sampling rule


def test_sample_times_are_segment_centres():
    np.testing.assert_allclose(sample_times(0.0, 8.0, 4), [1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(sample_times(2.0, 3.0, 2), [2.25, 2.75])
    np.testing.assert_allclose(sample_times(5.0, 5.0, 3), [5.0, 5.0, 5.0])
    with pytest.raises(ValueError):
        sample_times(3.0, 2.0, 4)
    with pytest.raises(ValueError):
        sample_times(0.0, 1.0, 0)


def test_one_frame_per_segment_when_counts_match(tmp_path):
    path = write_code_video(tmp_path / "sixteen.mp4", 16, fps=8)
    frames = decode_frames(path, 16)
    assert codes(frames) == list(range(16))


@pytest.mark.quick
def test_short_clip_repeats_frames_in_order(tmp_path):
    path = write_code_video(tmp_path / "three.mp4", 3, fps=10)
    frames, stats = _decode_frames_with_stats(path, 16)
    got = codes(frames)
    assert len(got) == 16
    assert got == sorted(got) and set(got) == {0, 1, 2}
    assert all(5 <= got.count(i) <= 6 for i in range(3))  # each frame for its share of time
    assert stats.sequential and stats.seeks == 0
    assert stats.frames_converted == 3  # repeated frames are converted once
    clip = load_clip(path, num_frames=16, size=32)
    assert clip.shape == (16, 32, 32, 3)


def test_single_frame_video(tmp_path):
    path = write_code_video(tmp_path / "one.mkv", 1, fps=10)
    assert codes(decode_frames(path, 5)) == [0] * 5


@pytest.mark.quick
def test_variable_frame_rate_uses_timestamps(tmp_path):
    # Irregular gaps: 40 ms, long pauses of 700 ms, bursts of 10 ms.
    gaps = [40, 700, 10, 10, 10, 300, 40, 40, 900, 20, 20, 500, 40, 40, 40, 1200, 40, 40, 40, 40]
    pts_ms = np.concatenate([[0], np.cumsum(gaps)]).tolist()
    path = write_code_video(tmp_path / "vfr.mkv", len(pts_ms), pts_ms=pts_ms, codec_options={"bf": "0"})
    ref_times, _ = decode_all(path)
    np.testing.assert_allclose(ref_times, np.array(pts_ms) / 1000)

    frames, stats = _decode_frames_with_stats(path, 12)
    expected = [displayed_index(ref_times, t) for t in stats.times]
    assert codes(frames) == expected
    # Treating the clip as constant-rate (index = t * frames / duration) would pick other frames.
    duration = stats.times[-1] + stats.times[0]
    naive = [min(int(t * len(pts_ms) / duration), len(pts_ms) - 1) for t in stats.times]
    assert naive != expected


# ----------------------------------------------------------------------------- seeking


@pytest.mark.parametrize(
    "suffix, codec, options",
    [
        ("mp4", "libx264", None),
        ("mp4", "libx264", {"preset": "fast", "bf": "3"}),  # B-frames: pts != dts, reordering
        ("mkv", "libx264", None),
        ("webm", "libvpx-vp9", None),
        ("avi", "mpeg4", None),
        ("ts", "libx264", None),  # no full index: inexact seeks, retried from further back
    ],
    ids=["mp4", "mp4-bframes", "mkv", "webm-vp9", "avi-mpeg4", "ts"],
)
def test_long_clip_uses_seeks_and_matches_reference(tmp_path, suffix, codec, options):
    fps, seconds = 10, 60
    path = write_code_video(
        tmp_path / f"long.{suffix}", fps * seconds, codec=codec, fps=fps, gop=2 * fps, codec_options=options
    )
    frames, stats = _decode_frames_with_stats(path, 16)
    assert not stats.sequential
    assert stats.seeks >= 10
    assert stats.frames_decoded < fps * seconds / 2  # far from decoding everything
    assert stats.frames_converted == 16
    assert codes(frames) == cfr_expected(stats.times, fps)

    ref_times, ref_frames = decode_all(path)
    for t, frame in zip(stats.times, frames):
        assert np.abs(frame.astype(np.float32) - ref_frames[displayed_index(ref_times, t)]).mean() < 2.0


def test_dense_sampling_decodes_forward_instead_of_seeking(tmp_path):
    # 100 frames in a 20 s clip: targets are 0.2 s apart, keyframes every 5 s.
    fps = 10
    path = write_code_video(tmp_path / "dense.mp4", 20 * fps, fps=fps, gop=5 * fps)
    frames, stats = _decode_frames_with_stats(path, 100)
    assert codes(frames) == cfr_expected(stats.times, fps)
    assert stats.seeks == 0
    assert stats.frames_decoded <= 20 * fps + 2


def test_window_seeks_to_its_start(minute_clip):
    path = minute_clip
    frames, stats = _decode_frames_with_stats(path, 4, start=40.0, end=42.0)
    np.testing.assert_allclose(stats.times, [40.25, 40.75, 41.25, 41.75])
    assert codes(frames) == [402, 407, 412, 417]
    assert stats.seeks >= 1 and stats.frames_decoded < 60

    clip = load_clip(path, num_frames=4, size=24, start=40.0, end=42.0)
    assert clip.shape == (4, 24, 24, 3)
    # An end past the clip is clamped to the clip's end.
    frames, stats = _decode_frames_with_stats(path, 2, start=58.0, end=1000.0)
    np.testing.assert_allclose(stats.times, [58.5, 59.5])
    assert codes(frames) == [585, 595]


@pytest.mark.parametrize(
    "start, end",
    [(-1.0, None), (None, -2.0), (5.0, 5.0), (6.0, 2.0), (60.0, None), (100.0, 200.0), (float("nan"), None)],
)
def test_bad_windows_raise_value_error(minute_clip, start, end):
    with pytest.raises(ValueError):
        load_clip(minute_clip, num_frames=4, start=start, end=end)


# ----------------------------------------------------------------------------- formats


FORMATS = [
    # suffix, codec, written pix_fmt, decoded pix_fmt
    ("mp4", "libx264", "yuv420p", "yuv420p"),
    ("mov", "libx264", "yuv420p", "yuv420p"),
    ("webm", "libvpx-vp9", "yuv420p", "yuv420p"),
    ("webm", "libvpx", "yuv420p", "yuv420p"),
    ("mkv", "libx264", "yuv420p", "yuv420p"),
    ("avi", "mpeg4", "yuv420p", "yuv420p"),
    ("gif", "gif", "rgb8", "bgra"),
    ("mp4", "libx264", "yuv444p", "yuv444p"),
    ("mp4", "libx264", "yuv420p10le", "yuv420p10le"),
    ("mp4", "libx265", "yuv420p10le", "yuv420p10le"),
    ("mkv", "ffv1", "yuv420p10le", "yuv420p10le"),
    ("mp4", "libx265", "gray", "gray"),
    ("mkv", "ffv1", "gray10le", "gray10le"),
    ("mov", "prores_ks", "yuv422p10le", "yuv422p10le"),
    ("mkv", "mjpeg", "yuvj422p", "yuvj422p"),
    ("mov", "png", "pal8", "pal8"),
]


@pytest.mark.parametrize("suffix, codec, pix_fmt, decoded_fmt", FORMATS, ids=lambda v: str(v))
def test_formats_and_pixel_formats(tmp_path, suffix, codec, pix_fmt, decoded_fmt):
    fps = 10
    path = write_code_video(tmp_path / f"clip.{suffix}", 24, height=48, width=64, codec=codec, pix_fmt=pix_fmt, fps=fps)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == decoded_fmt

    frames, stats = _decode_frames_with_stats(path, 8)
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert codes(frames) == cfr_expected(stats.times, fps)
    colours = read_patch_colours(frames[0])
    if "gray" in pix_fmt:
        # Luma only: grey patches as bright as the colours' luma.
        assert np.ptp(colours, axis=1).max() < 3
        assert np.abs(colours.mean(axis=1) - PATCH_COLOURS @ [0.299, 0.587, 0.114]).max() < 12
    else:
        assert np.abs(colours - PATCH_COLOURS).max() < 12

    clip = load_clip(path, num_frames=8, size=32)
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.float32
    assert 0.0 <= clip.min() and clip.max() <= 1.0


def test_odd_size_resize_and_crop(tmp_path):
    path = write_code_video(tmp_path / "odd.mp4", 20, height=61, width=97, codec="libx264", pix_fmt="yuv444p")
    frames = decode_frames(path, 4)
    assert frames[0].shape == (61, 97, 3)
    assert codes(frames) == cfr_expected(sample_times(0, 2.0, 4), 10)
    clip = load_clip(path, num_frames=4, size=288)
    assert clip.shape == (4, 288, 288, 3)
    clip = load_clip(path, num_frames=4, size=17)
    assert clip.shape == (4, 17, 17, 3)
    native = load_clip(path, num_frames=4, size=None)
    assert native.shape == (4, 61, 97, 3)


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize(
    "suffix, rotation, hflip, expected",
    [
        # rotation: counter-clockwise degrees (PyAV / VideoFrame.rotation convention).
        ("mp4", 90, False, lambda a: np.rot90(a, 1)),
        ("mp4", -90, False, lambda a: np.rot90(a, -1)),  # typical phone portrait video
        ("mov", 180, False, lambda a: np.rot90(a, 2)),
        ("mkv", 270, False, lambda a: np.rot90(a, -1)),
        ("webm", 90, False, lambda a: np.rot90(a, 1)),
        ("mp4", 0, True, lambda a: a[:, ::-1]),
        ("mp4", 90, True, lambda a: np.rot90(a, 1)[:, ::-1]),
    ],
    ids=["mp4-ccw90", "mp4-cw90", "mov-180", "mkv-270", "webm-ccw90", "mp4-hflip", "mp4-ccw90-hflip"],
)
def test_rotation_metadata_is_applied(tmp_path, suffix, rotation, hflip, expected):
    original = quadrant_frame(48, 64)
    codec = "libvpx-vp9" if suffix == "webm" else "libx264"
    path = write_video(tmp_path / f"rot.{suffix}", [original] * 10, codec=codec, rotation=rotation, hflip=hflip, fps=10)
    with av.open(str(path)) as container:  # the metadata really is in the file
        frame = next(container.decode(video=0))
        assert frame.side_data.get(SideDataType.DISPLAYMATRIX) is not None
        if not hflip:
            assert frame.rotation % 360 == rotation % 360

    frames = decode_frames(path, 3)
    want = expected(original)
    for frame in frames:
        assert frame.shape == want.shape
        assert np.abs(frame.astype(np.float32) - want).mean() < 4
    clip = load_clip(path, num_frames=2, size=None)
    assert clip.shape[1:3] == want.shape[:2]


def test_rotation_portrait_phone_clip_comes_out_portrait(tmp_path):
    # A phone records landscape sensor frames tagged "rotate 90 degrees clockwise".
    original = quadrant_frame(48, 64)
    path = write_video(tmp_path / "phone.mp4", [original] * 5, rotation=-90)
    frame = decode_frames(path, 1)[0]
    assert frame.shape == (64, 48, 3)
    # Clockwise: the bright top-left quadrant ends up top-right.
    h, w = frame.shape[:2]
    assert frame[: h // 2, w // 2 :].mean() > BRIGHT - 10
    assert frame[: h // 2, : w // 2].mean() < DARK + 10


def test_image_exif_orientation(tmp_path):
    original = quadrant_frame(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF "rotate 90 CW to display"
    path = tmp_path / "photo.jpg"
    Image.fromarray(original).save(path, exif=exif, quality=95)
    clip = load_clip(path, num_frames=3, size=None)
    assert clip.shape == (3, 64, 48, 3)
    want = np.rot90(original, -1).astype(np.float32) / 255
    assert np.abs(clip[0] - want).mean() < 0.03


# ----------------------------------------------------------------------------- images and in-memory input


def test_image_file_becomes_repeated_frame(tmp_path):
    image = code_frame(5, 61, 97)
    path = tmp_path / "still.png"
    Image.fromarray(image).save(path)
    clip = load_clip(path, num_frames=4, size=32)
    assert clip.shape == (4, 32, 32, 3)
    assert all(np.array_equal(clip[0], c) for c in clip)
    native = load_clip(path, num_frames=2, size=None)
    np.testing.assert_allclose(native[1], image / 255, atol=1e-6)
    with pytest.raises(ValueError):
        load_clip(path, num_frames=2, start=1.0)


def test_list_of_pil_images():
    images = [Image.fromarray(code_frame(i, 40, 60)) for i in range(3)]
    clip = load_clip(images, num_frames=6, size=None)
    assert clip.shape == (6, 40, 60, 3)
    assert codes(list(np.round(clip * 255).astype(np.uint8))) == [0, 0, 1, 1, 2, 2]
    assert load_clip(images, num_frames=2, size=16).shape == (2, 16, 16, 3)
    # Grey / RGBA PIL images are converted to RGB.
    mixed = [images[0].convert("L"), images[1].convert("RGBA"), np.asarray(images[2])]
    assert load_clip(mixed, num_frames=3, size=20).shape == (3, 20, 20, 3)


def test_numpy_inputs_uint8_and_float_agree():
    video = np.stack([code_frame(i, 30, 50) for i in range(8)])
    clip_u8 = load_clip(video, num_frames=4, size=None)
    assert codes(list(np.round(clip_u8 * 255).astype(np.uint8))) == [1, 3, 5, 7]
    clip_f = load_clip(video.astype(np.float64) / 255, num_frames=4, size=None)
    np.testing.assert_allclose(clip_f, clip_u8, atol=1e-6)
    resized_u8 = load_clip(video, num_frames=4, size=24)
    resized_f = load_clip(video.astype(np.float32) / 255, num_frames=4, size=24)
    assert resized_u8.shape == resized_f.shape == (4, 24, 24, 3)
    assert np.abs(resized_u8 - resized_f).max() < 3 / 255
    single = load_clip(video[0], num_frames=3, size=10)
    assert single.shape == (3, 10, 10, 3)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((32, 32), np.uint8),  # no channel axis
        np.zeros((4, 32, 32, 4), np.uint8),  # RGBA
        np.zeros((4, 32, 32, 1), np.uint8),  # one channel
        np.zeros((3, 32, 32), np.uint8),  # channels first, single frame
        np.zeros((2, 4, 3, 32, 32), np.uint8),  # 5-D
        np.zeros((0, 32, 32, 3), np.uint8),  # no frames
        np.zeros((4, 0, 32, 3), np.uint8),  # empty frames
        np.full((4, 8, 8, 3), 2.0, np.float32),  # float out of [0, 1]
        np.full((4, 8, 8, 3), -0.5, np.float32),
        np.full((4, 8, 8, 3), np.nan, np.float32),
        np.zeros((4, 8, 8, 3), np.int32),  # unsupported dtype
    ],
    ids=lambda a: f"{a.shape}-{a.dtype}",
)
def test_malformed_arrays_raise_value_error(array):
    with pytest.raises(ValueError):
        load_clip(array, num_frames=4, size=8)


def test_other_bad_sources_raise_value_error():
    with pytest.raises(ValueError):
        load_clip([], num_frames=4)
    with pytest.raises(ValueError):
        load_clip([np.zeros((8, 8, 3), np.uint8), "frame"], num_frames=4)
    with pytest.raises(ValueError):
        load_clip(12345, num_frames=4)
    with pytest.raises(ValueError):
        load_clip(np.zeros((8, 8, 3), np.uint8), num_frames=4, start=0.0, end=1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"num_frames": -3},
        {"num_frames": MAX_NUM_FRAMES + 1},
        {"num_frames": 2.5},
        {"size": 0},
        {"size": MAX_SIZE + 1},
        {"size": 32.0},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        load_clip(np.zeros((2, 8, 8, 3), np.uint8), **kwargs)


# ----------------------------------------------------------------------------- resize helpers


@pytest.mark.quick
def test_resize_shorter_side_and_center_crop():
    frame = np.zeros((61, 97, 3), np.uint8)
    assert resize_shorter_side(frame, 288).shape == (288, 458, 3)
    assert resize_shorter_side(frame.transpose(1, 0, 2), 288).shape == (458, 288, 3)
    assert resize_shorter_side(np.zeros((40, 40, 3), np.float32), 10).shape == (10, 10, 3)
    assert resize_shorter_side(frame, 20).dtype == np.uint8
    stripes = np.zeros((1, 10, 20, 3), np.uint8)
    stripes[:, :, 5:15] = 255
    crop = center_crop(stripes, 10)
    assert crop.shape == (1, 10, 10, 3) and crop.min() == 255
    with pytest.raises(ValueError):
        center_crop(stripes, 11)


# ----------------------------------------------------------------------------- bad files


def _assert_decode_error(path: Path, **kwargs):
    with pytest.raises(VideoDecodeError) as info:
        load_clip(path, num_frames=4, size=16, **kwargs)
    assert str(path) in str(info.value)
    assert info.value.path == str(path) and info.value.reason
    return info.value


@pytest.mark.quick
def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_clip(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError):
        load_clip(str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError):
        decode_frames(tmp_path / "nope.mkv", 4)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    _assert_decode_error(path)


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for i, suffix in enumerate(["mp4", "mkv", "avi", "bin"]):
        path = tmp_path / f"random{i}.{suffix}"
        path.write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
        _assert_decode_error(path)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("This is not a video.\n" * 200)
    _assert_decode_error(path)


def test_directory_is_not_a_video(tmp_path):
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    _assert_decode_error(folder)


def test_playlist_pointing_at_the_network_fails_fast(tmp_path):
    path = tmp_path / "remote.m3u8"
    path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://10.255.255.1/seg.ts\n#EXT-X-ENDLIST\n")
    _assert_decode_error(path)


def test_broken_image_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _assert_decode_error(path)


@pytest.mark.parametrize("name, codec", [("tone.m4a", "aac"), ("tone.wav", "pcm_s16le"), ("tone.mka", "libopus")])
def test_audio_only_file(tmp_path, name, codec):
    path = write_audio_only(tmp_path / name, codec=codec)
    error = _assert_decode_error(path)
    assert "no video stream" in error.reason


@pytest.mark.quick
def test_truncated_mp4_with_index_at_end(tmp_path):
    path = write_code_video(tmp_path / "full.mp4", 100, fps=10)  # moov atom written last
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _assert_decode_error(cut)


@pytest.mark.parametrize(
    "suffix, options",
    [("mp4", {"movflags": "faststart"}), ("mkv", None), ("webm", None), ("ts", None)],
)
def test_truncated_file_returns_decodable_part(tmp_path, suffix, options):
    fps = 10
    codec = "libvpx-vp9" if suffix == "webm" else "libx264"
    path = write_code_video(
        tmp_path / f"full.{suffix}", 40 * fps, fps=fps, gop=2 * fps, codec=codec, container_options=options
    )
    cut = tmp_path / f"cut.{suffix}"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    frames, stats = _decode_frames_with_stats(cut, 16)
    assert len(frames) == 16
    got = codes(frames)
    assert got == sorted(got)
    expected = cfr_expected(stats.times, fps)
    # The first half of the times decode exactly; later ones reuse the last decodable frame.
    assert got[:5] == expected[:5]
    assert max(got) < 40 * fps * 0.75
    assert load_clip(cut, num_frames=8, size=16).shape == (8, 16, 16, 3)


def test_truncated_to_header_only(tmp_path):
    path = write_code_video(tmp_path / "full.mkv", 50, fps=10)
    cut = tmp_path / "header.mkv"
    cut.write_bytes(path.read_bytes()[:300])
    _assert_decode_error(cut)


def test_corrupt_middle_still_decodes(tmp_path):
    fps = 10
    path = write_code_video(tmp_path / "full.mkv", 30 * fps, fps=fps, gop=2 * fps)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1000] = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    frames, stats = _decode_frames_with_stats(bad, 16)
    got = codes(frames)
    expected = cfr_expected(stats.times, fps)
    assert len(frames) == 16
    assert got == sorted(got)
    # Times before the damage and well after it (next keyframes) are exact.
    assert got[:6] == expected[:6] and got[-3:] == expected[-3:]


# ----------------------------------------------------------------------------- bounded work


@pytest.mark.parametrize("num_frames", [16, 32])
def test_single_keyframe_file_decodes_in_work_proportional_to_the_file(tmp_path, num_frames):
    """One keyframe: every seek lands at frame 0, so seeking must stop after the first useless one
    (it used to re-decode from frame 0 for every sampled time: 77,008 frames for 16 samples of this
    4,000-frame file) and the samples must still be the right frames."""
    count, fps = 4000, 100
    path = write_single_keyframe_video(tmp_path / "onekey.mp4", count, fps=fps)
    frames, stats = _decode_frames_with_stats(path, num_frames)
    assert stats.frames_decoded <= 2 * count
    assert not stats.damaged
    times = [i / fps for i in range(count)]
    assert [read_code(f) for f in frames] == [displayed_index(times, t) for t in stats.times]


def test_seeking_stops_only_when_it_skips_nothing(tmp_path):
    """With a keyframe every second, seeking keeps paying off: far fewer frames than the file."""
    count, fps = 4000, 100
    path = write_code_video(tmp_path / "gop.mp4", count, fps=fps, gop=fps)
    frames, stats = _decode_frames_with_stats(path, 8)
    assert not stats.seeking_stopped
    assert stats.frames_decoded < count / 2
    times = [i / fps for i in range(count)]
    assert [read_code(f) for f in frames] == [displayed_index(times, t) for t in stats.times]


def test_decoding_over_its_frame_budget_is_a_clear_error(tmp_path, monkeypatch):
    """A header that announces far fewer frames than the file holds (here: a stream rate claimed to
    be 1 fps) bounds the work: past twice the announced frames decoding stops with an error."""
    import encoder.video.decode as video

    path = write_code_video(tmp_path / "many.mp4", 400, fps=100)
    real = video._stream_info

    def lying(container, stream, path, *args):
        info = real(container, stream, path, *args)
        info.fps = 1.0
        return info

    monkeypatch.setattr(video, "_stream_info", lying)
    monkeypatch.setattr(video, "MIN_FRAME_BUDGET", 5)
    with pytest.raises(VideoDecodeError, match="more than 8 frames"):
        load_clip(path, 4, size=16)


def test_decoding_over_its_time_limit_is_a_clear_error(tmp_path):
    path = write_code_video(tmp_path / "clip.mp4", 40)
    with pytest.raises(VideoDecodeError, match="time limit"):
        load_clip(path, 4, size=16, time_limit_s=1e-9)
    assert load_clip(path, 4, size=16, time_limit_s=None).shape == (4, 16, 16, 3)


@pytest.mark.parametrize("kwargs", [{"max_side": 0}, {"max_side": 2.5}, {"time_limit_s": 0}, {"time_limit_s": "1"}])
def test_bad_limits_raise_value_error(tmp_path, kwargs):
    path = write_code_video(tmp_path / "clip.mp4", 10)
    with pytest.raises(ValueError):
        load_clip(path, 4, size=16, **kwargs)


def test_frame_size_change_mid_stream_is_checked_on_every_frame(tmp_path, monkeypatch):
    """The header says 64x64; the second half is 1600x1600. The decoder refuses frames of more than
    max_side ** 2 pixels before decoding them (they read like damage: the clip comes from the frames
    before them), and a frame wider or taller than max_side within that area is refused before it
    is converted."""
    import encoder.video.decode as video

    path = write_resolution_switch(tmp_path / "switch.ts")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.width == 64
    converted = []
    real = video._upright_rgb
    monkeypatch.setattr(video, "_upright_rgb", lambda frame, p: converted.append(frame.width) or real(frame, p))
    frames, stats = video._decode_frames_with_stats(path, 16, max_side=256)
    assert {f.shape for f in frames} == {(64, 64, 3)} and set(converted) == {64}
    assert stats.damaged
    assert stats.frames_decoded <= 20  # the 20 small frames; no large one came out of the decoder
    # Within the pixel area but over the side: refused before conversion.
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda p, max_side=None: real_open(p, 4096))
    with pytest.raises(VideoDecodeError, match="1600x1600, over the limit of 256"):
        load_clip(path, 16, size=32, max_side=256)
    assert set(converted) == {64}


def test_kept_frames_are_resized_right_after_conversion(tmp_path, monkeypatch):
    """Without a limit the clip decodes, and what load_clip holds are frames already at the output
    size: never the sixteen native frames (eight of them 1600x1600, 7.7 MB each) it used to keep."""
    import encoder.video.decode as video

    path = write_resolution_switch(tmp_path / "switch.ts")
    held = []
    real = video._to_clip
    monkeypatch.setattr(
        video, "_to_clip", lambda frames, size: held.extend(f.shape for f in frames) or real(frames, size)
    )
    clip = load_clip(path, 16, size=32)
    assert clip.shape == (16, 32, 32, 3)
    assert clip[0].mean() < clip[-1].mean()  # both halves are there
    assert set(held) == {(32, 32, 3)}
    native = decode_frames(path, 16)
    assert {f.shape for f in native} == {(64, 64, 3), (1600, 1600, 3)}
    np.testing.assert_array_equal(clip, real(native, 32))  # same pixels as resizing afterwards


# ------------------------------------------------------------- stream duration: one rule, app and decoder


def _write_late_video(path: Path, first_s: float, num_frames: int = 30, fps: int = 10, audio_s: float = 0.0) -> Path:
    """Code-frame video whose first frame is shown at ``first_s`` seconds; with ``audio_s``, an
    audio stream from 0 to ``audio_s`` seconds comes first in the file (so the container starts
    before the video stream)."""
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=16000, layout="mono") if audio_s else None
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.options = {"preset": "ultrafast"}
        for offset in range(0, int(audio_s * 16000), 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, offset, Fraction(1, 16000)
            container.mux(audio.encode(frame))
        if audio is not None:
            container.mux(audio.encode(None))
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(code_frame(i), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round(first_s * fps) + i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


def _decoder_span(path: Path) -> tuple[float, float]:
    import encoder.video.decode as video

    with av.open(str(path)) as container:
        info = video._stream_info(container, video.video_stream(container, path), path)
    return info.start, info.duration


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_app_duration_check_measures_the_length_the_decoder_reads(tmp_path, suffix):
    """A video stream starting at 5 s (Matroska's segment duration counts from 0, not from the first
    frame: 8 s here): the app's --max-duration check and the decoder both take it as 3 s long, and
    every sampled time falls inside the stream (no frame repeated past its end)."""
    from apps.limits import AppLimits, VideoRejectedError, check_video

    path = _write_late_video(tmp_path / f"late{suffix}", first_s=5.0)
    start, duration = _decoder_span(path)
    assert start == pytest.approx(5.0) and duration == pytest.approx(3.0)
    assert check_video(path, AppLimits(max_duration_s=3.05)).duration_s == duration
    with pytest.raises(VideoRejectedError, match="3.0 s long"):
        check_video(path, AppLimits(max_duration_s=2.9))
    frames, stats = _decode_frames_with_stats(path, 8)
    assert stats.times[-1] < 8.0
    assert codes(frames) == [int(math.floor((t - 5.0) * 10 + 1e-9)) for t in stats.times]


def test_stream_starting_after_the_container_has_one_duration_everywhere(tmp_path):
    """Audio from 0 to 6 s, video from 2 s, in Matroska (no per-stream duration in the header): the
    rule (the container's end minus the stream's start) gives the app and the decoder one length."""
    from apps.limits import probe_video
    from encoder.video.decode import stream_duration, stream_start, video_stream

    path = _write_late_video(tmp_path / "audio_first.mkv", first_s=2.0, audio_s=6.0)
    with av.open(str(path)) as container:
        stream = video_stream(container, path)
        # start_time is 0, or slightly negative where the AAC encoder's priming is written (FFmpeg 7)
        assert stream.duration is None and -0.1 < container.start_time / av.time_base <= 0
        end = container.duration / av.time_base
        assert stream_start(container, stream) == pytest.approx(2.0)
        assert stream_duration(container, stream) == pytest.approx(end - 2.0)
    start, duration = _decoder_span(path)
    assert start == pytest.approx(2.0)
    assert probe_video(path).duration_s == duration == pytest.approx(end - 2.0)
