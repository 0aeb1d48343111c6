"""The app's video-text side: search a folder of clips by text, and zero-shot labels for a clip.

``SearchService`` holds one VideoPrism video-text model (``vlm.retrieval``) and, when the app was
started with ``--search-dir``, the index of that folder (built, or brought up to date, at start:
``vlm.retrieval.index.build_index`` resumes, so a restart only embeds new clips). Requests are
checked against the app's limits (text length, label count, the clip gate of ``apps.limits``)
before any model work; the model runs one piece of work at a time, in the thread given as
``run_model_work`` (the app passes :meth:`apps.service.ModelService.run_model_work`, so that one
thread runs torch: :mod:`apps.compute_thread`), else under a lock of its own.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.limits import AppLimits
from apps.service import AppInputError, checked_text, checked_video, decode_within_limits, parse_candidates
from vlm.retrieval.index import VideoIndex, build_index
from vlm.retrieval.video_text_model import VideoTextModel
from vlm.retrieval.zero_shot import classify_embeddings, label_embeddings

MAX_RESULTS = 24


@dataclass(frozen=True)
class SearchHit:
    video: str  # path of the clip on the server (inside the search folder)
    score: float  # cosine similarity

    @property
    def name(self) -> str:
        return Path(self.video).name


def default_index_dir(search_dir: str | os.PathLike, model: VideoTextModel) -> Path:
    """Where the app keeps the index of ``search_dir`` for ``model``: the user's cache folder
    (``$XDG_CACHE_HOME`` or ~/.cache) / prism-vlm / search-index / a hash of both."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(f"{Path(search_dir).resolve()}|{model.source}|{model.identity()}".encode()).hexdigest()[:16]
    return cache / "prism-vlm" / "search-index" / key


def _resolves_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, links followed, lies inside ``folder``: a symlink in the search folder that points
    elsewhere is neither indexed nor served."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


class SearchService:
    """Text-to-clip search over ``index`` (None: no search folder) and zero-shot labels with ``model``.

    run_model_work: runs ``work()`` with the model to itself and returns its result (default: under
    a lock of this service's own)."""

    def __init__(
        self,
        model: VideoTextModel,
        index: VideoIndex | None,
        limits: AppLimits | None = None,
        search_dir: str | os.PathLike | None = None,
        run_model_work: Callable[[Callable[[], Any]], Any] | None = None,
    ):
        self.model = model
        self.index = index
        self.limits = limits or AppLimits()
        self.search_dir = None if search_dir is None else Path(search_dir).resolve()
        self._lock = threading.Lock()
        self._run_model_work = run_model_work or self._locked

    @classmethod
    def start(
        cls,
        model: VideoTextModel,
        search_dir: str | os.PathLike | None,
        limits: AppLimits | None = None,
        index_dir: str | os.PathLike | None = None,
        progress: bool = True,
        run_model_work: Callable[[Callable[[], Any]], Any] | None = None,
    ) -> SearchService:
        """Index ``search_dir`` (resuming an earlier index in ``index_dir``, default
        :func:`default_index_dir`; in the calling thread) and serve it; without ``search_dir``,
        zero-shot labels only."""
        if search_dir is None:
            return cls(model, None, limits, run_model_work=run_model_work)
        from encoder.video.clips import list_videos

        search_dir = Path(search_dir)
        if not search_dir.is_dir():
            raise FileNotFoundError(f"--search-dir {search_dir} is not a folder")
        index_dir = Path(index_dir) if index_dir is not None else default_index_dir(search_dir, model)
        inside = [video for video in list_videos(search_dir) if _resolves_inside(video, search_dir)]
        build_index(model, inside, index_dir, progress=progress)
        return cls(model, VideoIndex.load(index_dir), limits, search_dir, run_model_work)

    def _locked(self, work: Callable[[], Any]) -> Any:
        with self._lock:
            return work()

    @property
    def can_search(self) -> bool:
        return self.index is not None and len(self.index) > 0

    def search(self, query: str | None, top_k: float = 8) -> list[SearchHit]:
        """The ``top_k`` clips of the search folder closest to ``query``, best first."""
        if not self.can_search:
            raise AppInputError("No clips to search: start the app with --search-dir FOLDER (a folder of videos).")
        query = checked_text(query, "search text", self.limits)
        if float(top_k) != int(top_k) or not 1 <= int(top_k) <= MAX_RESULTS:
            raise AppInputError(f"Results must be a whole number from 1 to {MAX_RESULTS}, got {top_k}.")
        scores, rows = self._run_model_work(lambda: self.index.search(self.model.embed_texts([query]), int(top_k)))
        hits = [SearchHit(self.index.videos[int(row)], float(score)) for score, row in zip(scores[0], rows[0])]
        # an index kept from before may list a link that leads out of the folder: never served
        return [hit for hit in hits if self.search_dir is None or _resolves_inside(hit.video, self.search_dir)]

    def classify(self, video: str | os.PathLike | None, labels: str | Sequence[str] | None) -> dict[str, float]:
        """Zero-shot label probabilities of the clip, {label: probability}, highest first."""
        parsed = (
            parse_candidates(labels, self.limits.max_candidates)
            if isinstance(labels, str) or labels is None
            else list(labels)
        )
        if not parsed:
            raise AppInputError("No labels given: type them (comma-separated or one per line).")
        if len(parsed) > self.limits.max_candidates:
            raise AppInputError(f"{len(parsed)} labels; this app ranks at most {self.limits.max_candidates}.")
        parsed = [checked_text(label, "label", self.limits) for label in parsed]
        if len(set(parsed)) != len(parsed):
            raise AppInputError("A label appears more than once.")
        checked_video(video, self.limits)
        clip = decode_within_limits(Path(video), self.limits, self.model.num_frames, self.model.frame_size)
        probabilities = self._run_model_work(
            lambda: classify_embeddings(
                self.model, self.model.embed_clips(clip[None]), label_embeddings(self.model, parsed)
            )[0]
        )
        order = probabilities.argsort(descending=True)
        return {parsed[int(i)]: float(probabilities[i]) for i in order}
