"""Search and indexing throughput of ``vlm.retrieval``: exact search vs FAISS, side by side.

Search: N random L2-normalised embeddings (N = 10k and 100k, width 768 as VideoPrism-B's video-text
model), each query drawn near a random row; for each backend the one-off build time, queries/s one
query at a time (the app's case) and all at once, how often the row a query was drawn near comes
first (recall@1), and recall@10 against the exact result. Random high-dimensional points are nearly
equidistant, HNSW's hardest case: recall@10 here is a lower bound for real, clustered embeddings.
Indexing: ``build_index`` over a folder of clips with a video-text model (default: the shipped demo
one, on the shapes corpus' test clips when ``--clips`` is given), clips/s end to end (decode + embed).

    python scripts/bench_search.py [--sizes 10000 100000] [--dim 768] [--queries 1000] \\
        [--clips DIR_OR_MANIFEST --model SRC] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm.retrieval.index import search_embeddings


def bench_search(size: int, dim: int, queries: int, top_k: int = 10, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=-1)
    picks = torch.randint(0, size, (queries,), generator=generator)
    query = torch.nn.functional.normalize(
        embeddings[picks] + 0.5 * torch.randn(queries, dim, generator=generator) / dim**0.5, dim=-1
    )
    _, exact_rows = search_embeddings(embeddings, query, top_k)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backend, ef_search in (("exact", None), ("faiss", 128), ("faiss", 512)):
            options = {"cache_dir": folder, "ef_search": ef_search} if backend == "faiss" else {}
            started = time.perf_counter()
            search_embeddings(embeddings, query[:1], top_k, backend, **options)  # builds (and saves) the graph once
            build_s = time.perf_counter() - started
            single = min(200, queries)
            started = time.perf_counter()
            for i in range(single):
                search_embeddings(embeddings, query[i : i + 1], top_k, backend, **options)
            single_qps = single / (time.perf_counter() - started)
            started = time.perf_counter()
            _, batch_rows = search_embeddings(embeddings, query, top_k, backend, **options)
            batch_qps = queries / (time.perf_counter() - started)
            recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / top_k for a, b in zip(batch_rows, exact_rows)])
            planted = float(
                (batch_rows[:, 0] == picks).float().mean()
            )  # the row each query was drawn near, found first
            rows.append(
                {
                    "size": size,
                    "dim": dim,
                    "backend": backend,
                    "ef_search": ef_search,
                    "build_s": round(build_s, 3),
                    "queries_per_s_single": round(single_qps, 1),
                    "queries_per_s_batch": round(batch_qps, 1),
                    "recall@1_planted": round(planted, 4),
                    f"recall@{top_k}_vs_exact": round(float(recall), 4),
                }
            )
    return rows


def bench_index(clips: str, model_source: str | None, batch_size: int, workers: int) -> dict:
    from encoder.video.clips import list_videos
    from vlm.retrieval.index import build_index
    from vlm.retrieval.video_text_model import default_video_text_model, load_video_text_model

    model = load_video_text_model(model_source or default_video_text_model())
    videos = list_videos(clips)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        counts = build_index(model, videos, folder, batch_size=batch_size, num_workers=workers, progress=False)
        seconds = time.perf_counter() - started
    return {
        "clips": len(videos),
        "encoded": counts["encoded"],
        "seconds": round(seconds, 2),
        "clips_per_s": round(counts["encoded"] / seconds, 1),
        "model": model.source,
        "frames": model.num_frames,
        "frame_size": model.frame_size,
        "batch_size": batch_size,
        "workers": workers,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clips", default=None, help="folder or manifest of clips to time indexing on")
    parser.add_argument("--model", default=None, help="video-text model for indexing (default: the demo's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import faiss

    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "torch_threads": torch.get_num_threads(),
        "search": [],
    }
    for size in args.sizes:
        for row in bench_search(size, args.dim, args.queries):
            results["search"].append(row)
            print(json.dumps(row), flush=True)
    if args.clips:
        results["index"] = bench_index(args.clips, args.model, args.batch_size, args.workers)
        print(json.dumps(results["index"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
