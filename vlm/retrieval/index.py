"""A video index: the embedding of every clip of a folder or manifest, on disk, and search over it.

``build_index`` writes an index directory with the feature cache's writer
(``encoder.videoprism.features.write_clip_vectors``): sharded safetensors of video embeddings [rows, D],
``index.jsonl`` (video -> shard, row), ``errors.jsonl`` for clips that cannot be decoded, a
single-writer lock, and resuming that skips every clip already indexed or reported (a killed run
loses nothing it had written; a shard that did not reach the disk is redone). ``retrieval.json``
records the model, tokenizer and text settings, so ``VideoIndex.load`` + ``load_index_model``
search it with the model that built it.

Index lines are checked as the feature cache checks them (``encoder.videoprism.features.read_index``):
a malformed line (not a JSON object, a missing key, a "row" that is not a non-negative integer, a
"shard" not named ``shard-NNNNN.safetensors`` inside the index directory) is logged with its line
number and ignored by ``VideoIndex.load``; ``build_index`` on the same directory moves it aside and
embeds its clip again. Clip paths that are not UTF-8 (``os.fsdecode`` names) are stored as
``\\udcXX`` escapes and read back unchanged.

Search is exact by default (one matrix product, ``torch.topk``); ``backend="faiss"`` uses a FAISS
HNSW graph (``faiss-cpu``, the optional ``faiss`` extra) built once per index size and saved
beside the shards. Which to use when is measured in BENCHMARKS.md (``scripts/bench_search.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from encoder.common.atomic_files import atomic_output_path, write_file_atomically
from encoder.common.errors import PrismVlmError
from encoder.common.extras import MissingExtraError
from encoder.videoprism.features import CacheMeta, FeatureCache, check_cache_meta, write_clip_vectors
from vlm.retrieval.video_text_model import VideoTextModel, load_video_text_model

INDEX_KIND = "video_embeddings"
SETTINGS_FILE = "retrieval.json"
SEARCH_BACKENDS = ("exact", "faiss")
HNSW_NEIGHBOURS = 32  # FAISS HNSW graph degree (M)
HNSW_SEARCH_DEPTH = 128  # efSearch: candidates kept while searching (higher: better recall, slower)
MAX_GRAPHS_IN_MEMORY = 4  # FAISS graphs kept loaded between searches (the app searches one index many times)
_GRAPHS: dict[str, object] = {}


class VideoIndexError(PrismVlmError, ValueError):
    """Not an index directory, or an index built with other settings."""


@dataclass
class IndexSettings:
    """What an index was built with (``retrieval.json``)."""

    model: str
    tokenizer: str | None
    num_frames: int
    frame_size: int
    text_length: int
    temperature: float
    embedding_dim: int


def build_index(
    model: VideoTextModel,
    videos: Sequence[str],
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    shard_size: int = 1024,
    num_workers: int = 2,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Embed every video not yet in the index at ``out_dir`` and add it.

    videos: paths (``encoder.video.clips.list_videos`` of a folder or manifest).
    Returns counts {"encoded", "skipped", "errors"}. An index built by another model or with other
    frame settings raises ValueError (use another directory).
    """
    out = Path(out_dir)
    settings = IndexSettings(
        model=model.source,
        tokenizer=model.tokenizer_source,
        num_frames=model.num_frames,
        frame_size=model.frame_size,
        text_length=model.text_length,
        temperature=model.temperature,
        embedding_dim=model.embedding_dim,
    )
    meta = CacheMeta(
        encoder=model.source,
        encoder_config_sha1=model.identity(),
        num_frames=model.num_frames,
        size=model.frame_size,
        precision="fp32",
        storage_dtype="fp32",
        kind=INDEX_KIND,
    )
    out.mkdir(parents=True, exist_ok=True)
    check_cache_meta(out, meta)  # an index of another model or frame setting: refused before anything is written
    # written first, so a partial index (a killed run) can already be searched
    write_file_atomically(out / SETTINGS_FILE, (json.dumps(asdict(settings), indent=2) + "\n").encode())
    return write_clip_vectors(
        model.embed_clips,
        meta,
        videos,
        out,
        batch_size=batch_size,
        shard_size=shard_size,
        num_workers=num_workers,
        progress=progress,
        on_batch=on_batch,
        description="index",
    )


class VideoIndex:
    """An index directory in memory: ``videos`` (N paths) and ``embeddings`` [N, D] float32, L2-normalised."""

    def __init__(
        self,
        directory: str | os.PathLike,
        videos: list[str],
        embeddings: torch.Tensor,
        settings: IndexSettings,
        errors: dict[str, str],
    ):
        self.directory = Path(directory)
        self.videos = videos
        self.embeddings = embeddings
        self.settings = settings
        self.errors = errors

    def __len__(self) -> int:
        return len(self.videos)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> VideoIndex:
        directory = Path(directory)
        if not (directory / SETTINGS_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} is not a video index (no {SETTINGS_FILE}); build one with prism-vlm index"
            )
        cache = FeatureCache(directory)
        if cache.meta.kind != INDEX_KIND:
            raise VideoIndexError(f"{directory} is a feature cache, not a video index")
        settings = IndexSettings(**json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8")))
        rows_by_shard: dict[str, list[tuple[int, int]]] = {}
        videos = cache.videos
        for position, video in enumerate(videos):
            entry = cache.entries[video]
            rows_by_shard.setdefault(entry["shard"], []).append((position, int(entry["row"])))
        embeddings = torch.zeros(len(videos), settings.embedding_dim)
        for shard, rows in rows_by_shard.items():
            positions, shard_rows = zip(*rows)
            embeddings[list(positions)] = _shard_rows(directory, shard, shard_rows)
        return cls(directory, videos, embeddings, settings, dict(cache.errors))

    def search(
        self, queries: torch.Tensor, top_k: int = 10, backend: str = "exact"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [Q, D] (normalised) -> (scores [Q, K], row indices [Q, K]), best first; K = min(top_k, N)."""
        if not len(self):
            raise VideoIndexError(f"the index {self.directory} holds no clips")
        return search_embeddings(self.embeddings, queries, top_k, backend, cache_dir=self.directory)


def _shard_rows(directory: Path, shard: str, rows: Sequence[int]) -> torch.Tensor:
    """Rows ``rows`` of the shard ``shard`` of an index, as float32 [len(rows), D]. A missing or
    unreadable shard, or a row past its end, raises VideoIndexError naming the shard: building the
    index again on the same directory repairs it (those clips are embedded again)."""
    repair = f"run prism-vlm index on {directory} again with the same videos to repair it"
    try:
        with safe_open(directory / shard, framework="pt") as handle:
            vectors = handle.get_tensor("tokens").float()
    except Exception as error:  # missing, empty, truncated: safetensors raises several types
        raise VideoIndexError(f"{directory / shard} cannot be read ({error}); {repair}") from None
    if max(rows) >= len(vectors):
        raise VideoIndexError(
            f"{directory / 'index.jsonl'} points at row {max(rows)} of {shard}, which holds {len(vectors)} rows; {repair}"
        )
    return vectors[list(rows)]


def load_index_model(
    index: VideoIndex, device: str | None = None, model: str | None = None, tokenizer: str | None = None
) -> VideoTextModel:
    """The video-text model that built ``index`` (or ``model``/``tokenizer`` instead), with its settings."""
    settings = index.settings
    return load_video_text_model(
        model or settings.model,
        tokenizer=tokenizer or settings.tokenizer,
        device=device,
        num_frames=settings.num_frames,
        frame_size=settings.frame_size,
        text_length=settings.text_length,
        temperature=settings.temperature,
    )


def search_embeddings(
    embeddings: torch.Tensor,
    queries: torch.Tensor,
    top_k: int = 10,
    backend: str = "exact",
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 256,
    ef_search: int = HNSW_SEARCH_DEPTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner-product search of ``queries`` [Q, D] over ``embeddings`` [N, D].

    backend: "exact" (matrix product and top-k, ``chunk_size`` queries at a time, so memory stays
    at chunk_size x N scores) or "faiss" (an HNSW graph; approximate; saved in ``cache_dir`` when
    given; ``ef_search`` candidates kept per search: more is slower and finds more true neighbours).
    Returns (scores [Q, K] float32, indices [Q, K] int64), K = min(top_k, N).
    """
    if backend not in SEARCH_BACKENDS:
        raise ValueError(f"backend must be one of {SEARCH_BACKENDS}, got {backend!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    queries = torch.as_tensor(queries, dtype=torch.float32)
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[1] != embeddings.shape[1]:
        raise ValueError(f"queries must be [Q, {embeddings.shape[1]}], got {tuple(queries.shape)}")
    k = min(top_k, len(embeddings))
    if backend == "faiss":
        graph = _faiss_graph(embeddings, cache_dir)
        graph.hnsw.efSearch = max(ef_search, k)
        scores, indices = graph.search(np.ascontiguousarray(queries.numpy()), k)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()
    scores, indices = [], []
    for start in range(0, len(queries), chunk_size):
        top = torch.topk(queries[start : start + chunk_size] @ embeddings.T, k, dim=1)
        scores.append(top.values)
        indices.append(top.indices)
    return torch.cat(scores), torch.cat(indices)


def _faiss_graph(embeddings: torch.Tensor, cache_dir: str | os.PathLike | None):
    """A FAISS HNSW inner-product graph over ``embeddings``, read from / saved to ``cache_dir``."""
    try:
        import faiss
    except ImportError:
        raise MissingExtraError("backend 'faiss' needs faiss-cpu: pip install 'prism-vlm[faiss]'") from None
    path = Path(cache_dir) / f"faiss_hnsw_{len(embeddings)}.index" if cache_dir is not None else None
    key = str(path.resolve()) if path is not None else None
    if key is not None and key in _GRAPHS:
        return _GRAPHS[key]
    if path is not None and path.is_file():
        graph = faiss.read_index(str(path))
    else:
        graph = faiss.IndexHNSWFlat(embeddings.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        graph.add(np.ascontiguousarray(embeddings.float().numpy()))
        if path is not None:
            try:
                with atomic_output_path(path) as temporary:
                    faiss.write_index(graph, str(temporary))
            except (OSError, RuntimeError):  # a read-only index: search without saving the graph
                pass
    if key is not None:
        _GRAPHS[key] = graph
        while len(_GRAPHS) > MAX_GRAPHS_IN_MEMORY:
            _GRAPHS.pop(next(iter(_GRAPHS)))
    return graph
