"""The app's long videos: an upload longer than one window read as windows (:mod:`vlm.long_video`), its
timeline, the moments a text describes, and chat replies that name the times they were read from.

Every model computation (each batch of windows through the glue and the video-text model, each batch of
captions, each reply) runs through :meth:`apps.service.ModelService.run_model_work`, one piece at a time, so
other requests are served between batches. A read video is kept per upload (path, modification time and
size; the last few) and its windows in the window cache (:class:`vlm.long_video.cache.WindowCache`, keyed by
the file's content), so a second request about it decodes nothing. A request may read at most
``limits.max_windows`` windows; one long video is read at a time.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.limits import AppLimits, decode_slot
from apps.service import (
    AppInputError,
    FrameStrip,
    ModelService,
    checked_text,
    checked_video,
    decode_within_limits,
)
from encoder.video.decode import VideoDecodeError, sample_times
from encoder.video.windows import video_window_spans
from vlm.inference.generation import GenerationSettings
from vlm.long_video import DEFAULT_WINDOW_S
from vlm.long_video.cache import WindowCache, module_fingerprint
from vlm.long_video.moments import Moment, find_moments
from vlm.long_video.questions import LongVideoQA, LongVideoReply
from vlm.long_video.reading import LongVideo, read_long_video
from vlm.long_video.timeline import TimelineSegment, make_timeline

LONG_VIDEO_CACHE_SIZE = 4  # read videos kept in memory (their windows stay in the window cache)
MAX_FIND_RESULTS = 20
TIMELINE_TOKENS = 32  # tokens per window caption, as `prism-vlm timeline`
REPLY_TOKENS = 64  # a long-video chat reply's default, as LongVideoQA's
NO_VIDEO_TEXT = (
    "This app was started without a video-text model (--video-text-model): finding moments in a video longer "
    "than one window, and chatting about one, need it. The timeline works without it."
)

Progress = Callable[[int, int, str], None]  # (done, total, what is being done)


@dataclass
class _Held:
    """A read long video and its timeline once made."""

    video: LongVideo
    timeline: list[TimelineSegment] | None = None


class LongVideoService:
    """Long uploads over ``service``'s glue and ``video_text_model`` (the app's video-text model, None
    without one): windows of ``window_s`` seconds, ``batch_size`` per forward pass, cached in ``cache``
    (default: the user's window cache, :func:`vlm.long_video.cache.default_cache_dir`); ``limits``: the
    request bounds (default: ``service``'s)."""

    def __init__(
        self,
        service: ModelService,
        video_text_model=None,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        cache: WindowCache | None = None,
        batch_size: int = 8,
        limits: AppLimits | None = None,
    ):
        self.service = service
        self.video_text_model = video_text_model
        self.window_s = float(window_s)
        self.cache = cache if cache is not None else WindowCache()
        self.batch_size = int(batch_size)
        self.limits = limits or service.limits
        self._read_lock = threading.Lock()
        self._lock = threading.Lock()
        self._videos: OrderedDict[tuple, _Held] = OrderedDict()

    @property
    def can_find(self) -> bool:
        return self.video_text_model is not None

    # ------------------------------------------------------------------ checks

    def window_count(self, video: str | os.PathLike | None) -> int:
        """The windows of a checked upload (the clip gate of ``apps.limits``; nothing decoded)."""
        checked_video(video, self.limits)
        try:
            return len(video_window_spans(video, self.window_s))
        except (VideoDecodeError, FileNotFoundError, ValueError) as error:
            reason = error.reason if isinstance(error, VideoDecodeError) else str(error)
            raise AppInputError(f"Could not read '{Path(video).name}': {reason}.") from error

    def is_long(self, video: str | os.PathLike | None) -> bool:
        """Whether the upload is longer than one window (False for anything the clip gate refuses: the
        clip path reports it)."""
        try:
            return self.window_count(video) > 1
        except AppInputError:
            return False

    def _checked_windows(self, video) -> int:
        count = self.window_count(video)
        if count > self.limits.max_windows:
            raise AppInputError(
                f"'{Path(video).name}' has {count} windows of {self.window_s:g} s; this app reads at most "
                f"{self.limits.max_windows} windows a request."
            )
        return count

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _key(video) -> tuple:
        path = Path(video)
        stat = path.stat()
        return str(path.resolve()), stat.st_mtime_ns, stat.st_size

    def read(
        self, video: str | os.PathLike | None, *, text: bool = False, progress: Progress | None = None
    ) -> LongVideo:
        """The upload read with the glue (and the video-text model when ``text``), within the windows limit;
        kept for the next request about it."""
        if text and not self.can_find:
            raise AppInputError(NO_VIDEO_TEXT)
        self._checked_windows(video)
        key = self._key(video)
        with self._read_lock:
            held = self._held(key)
            if held is not None and (not text or held.video.embeddings is not None):
                return held.video
            run = self.service.run_model_work
            glue, video_text = self.service.model, self.video_text_model if text else None
            # the weights' fingerprints (cache keys) are computed once, in the model thread
            modules = [glue.encoder, glue.resampler] + ([video_text.clip] if video_text is not None else [])
            run(lambda: [module_fingerprint(module) for module in modules])
            report = None if progress is None else (lambda done, total: progress(done, total, "reading windows"))
            try:
                with decode_slot(self.limits):
                    long_video = read_long_video(
                        video,
                        model=glue,
                        video_text_model=video_text,
                        window_s=self.window_s,
                        cache=self.cache,
                        batch_size=self.batch_size,
                        max_side=self.limits.max_side_px,
                        run=run,
                        on_progress=report,
                    )
            except VideoDecodeError as error:
                raise AppInputError(f"Could not decode '{Path(video).name}': {error.reason}.") from error
            with self._lock:
                self._videos[key] = _Held(long_video, held.timeline if held is not None else None)
                while len(self._videos) > LONG_VIDEO_CACHE_SIZE:
                    self._videos.popitem(last=False)
            return long_video

    def _held(self, key: tuple) -> _Held | None:
        with self._lock:
            held = self._videos.get(key)
            if held is not None:
                self._videos.move_to_end(key)
            return held

    # ------------------------------------------------------------------ tasks

    def timeline(self, video: str | os.PathLike | None, progress: Progress | None = None) -> list[TimelineSegment]:
        """The upload's timeline: every window captioned (greedy), neighbours that say the same merged."""
        long_video = self.read(video, progress=progress)
        held = self._held(self._key(video))
        if held is not None and held.timeline is not None:
            return held.timeline
        batches, total = [0], long_video.num_windows

        def run(work):
            captions = self.service.run_model_work(work)
            batches[0] += 1
            if progress is not None:
                progress(min(batches[0] * self.batch_size, total), total, "captioning windows")
            return captions

        segments = make_timeline(
            self.service.assistant,
            long_video,
            self.batch_size,
            min(TIMELINE_TOKENS, self.limits.max_new_tokens),
            run=run,
        )
        if held is not None:
            held.timeline = segments
        return segments

    def find(
        self, video: str | os.PathLike | None, text: str | None, top_k: float = 5, progress: Progress | None = None
    ) -> list[Moment]:
        """The spans of the upload that best match ``text``, best first (at most ``top_k``)."""
        if not self.can_find:
            raise AppInputError(NO_VIDEO_TEXT)
        text = checked_text(text, "text to find", self.limits)
        if float(top_k) != int(top_k) or not 1 <= int(top_k) <= MAX_FIND_RESULTS:
            raise AppInputError(f"Results must be a whole number from 1 to {MAX_FIND_RESULTS}, got {top_k}.")
        long_video = self.read(video, text=True, progress=progress)
        return self.service.run_model_work(lambda: find_moments(self.video_text_model, long_video, text, int(top_k)))

    def reply(
        self,
        video: str | os.PathLike | None,
        messages: Sequence[dict],
        max_new_tokens: int | float | None = None,
        generation: GenerationSettings | None = None,
        progress: Progress | None = None,
    ) -> LongVideoReply:
        """The reply to the last user message about a long upload (:class:`LongVideoQA`: from the part of the
        video it concerns, naming the times), made in one piece of model work."""
        if not self.can_find:
            raise AppInputError(NO_VIDEO_TEXT)
        settings = self.service.generation_settings(max_new_tokens, generation, REPLY_TOKENS)
        long_video = self.read(video, text=True, progress=progress)
        qa = LongVideoQA(
            self.service.assistant,
            self.video_text_model,
            long_video,
            max_new_tokens=settings.max_new_tokens,
            generation=settings,
            batch_size=self.batch_size,
        )
        return self.service.run_model_work(lambda: qa.reply(list(messages)))

    def reply_stream(self, *args, **kwargs) -> Iterator[str]:
        """:meth:`reply`'s text as a stream of one piece (the chat's stream)."""
        yield self.reply(*args, **kwargs).text

    def moment_strip(
        self, video: str | os.PathLike | None, start: float, end: float, num_frames: int | float | None = None
    ) -> FrameStrip:
        """The frames the model samples from ``[start, end]`` of the upload, with their times (seconds from
        the video's start)."""
        info = checked_video(video, self.limits)
        frames = self.service._frames(num_frames)
        start, end = max(0.0, float(start)), min(float(end), info.duration_s)
        if not end > start:
            raise AppInputError(f"No such moment: {start:g}-{end:g} s of a {info.duration_s:.1f} s video.")
        clip = decode_within_limits(Path(video), self.limits, frames, self.service.frame_size, start, end)
        pixels = np.clip(np.rint(clip * 255.0), 0, 255).astype(np.uint8)
        return FrameStrip(frames=pixels, times_s=sample_times(start, end, len(pixels)), info=info)
