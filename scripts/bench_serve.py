"""Load on ``prism-vlm serve`` through the official ``openai`` client: batching on against one request at a
time, side by side, each on a fresh server, and a greedy caption asked while a long sampled reply streams.

    python scripts/bench_serve.py [--model DIR] [--clip FILE] [--requests 20] [--max-batch 8] [--json-out FILE]

Load: ``--requests`` chat completions about ``--clip``, released together from as many threads, half
greedy and half sampled (temperature 0.8, a seed each), 32 new tokens each (``ignore_eos``, as vLLM's
serving benchmark does, so that both servers generate the same work), against a server started
with ``--max-batch 1`` (one at a time, in arrival order) and then one with ``--max-batch N``; the clip
sent as a base64 ``video_url`` (decoded for every request), then as a ``file://`` URL (decoded once:
the service keeps its last clips). Reported: requests per second, median and p90 latency (each request
from its own send), and the ratios batching on / one at a time.

Head-of-line: on the batching server, a greedy caption (16 tokens at most) alone, then the same caption
asked once a sampled reply of 200 tokens (``ignore_eos``) has started streaming; its time beside the
reply against alone (median of 3 each). Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_CLIP = REPO / "apps" / "examples" / "water_bottle_drumming.mp4"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str | None, max_batch: int, port: int, log: Path, media: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "vlm.cli.main", "serve", "--port", str(port), "--max-batch", str(max_batch)]
    command += ["--max-new-tokens", "256", "--device", "cpu", "--allowed-local-media-path", str(media)]
    command += ["--model", model] if model else []
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))


def wait_until_up(server: subprocess.Popen, client, log: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            client.models.list()
            return
        except Exception:  # noqa: BLE001 -- not up yet
            time.sleep(0.5)
    raise SystemExit("the server did not start in time")


def messages(video_url: str, text: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": video_url}}, {"type": "text", "text": text}],
        }
    ]


def ask(client, video_url: str, index: int, max_tokens: int = 32) -> float:
    sampled = index % 2 == 1
    began = time.perf_counter()
    client.chat.completions.create(
        model="prism-vlm",
        messages=messages(video_url, "What happens in this video?"),
        max_tokens=max_tokens,
        temperature=0.8 if sampled else 0,
        seed=index,
        extra_body={"ignore_eos": True},
    )
    return time.perf_counter() - began


def load(client, video_url: str, requests: int) -> dict:
    """``requests`` completions released together. -> req/s, median and p90 latency."""
    latencies: list[float] = [0.0] * requests
    start = threading.Barrier(requests + 1)

    def one(index: int) -> None:
        start.wait()
        latencies[index] = ask(client, video_url, index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests_per_s": requests / wall,
        "median_s": statistics.median(ordered),
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
    }


def head_of_line(client, video_url: str) -> dict:
    """A greedy caption alone, and beside a streaming sampled reply of up to 200 tokens (median of 3 each)."""
    caption = lambda: ask(client, video_url, 0, max_tokens=16)  # noqa: E731
    alone = statistics.median(caption() for _ in range(3))
    beside, reply_tokens = [], []
    for seed in range(3):
        stream = client.chat.completions.create(
            model="prism-vlm",
            messages=messages(video_url, "Tell me everything about this video, in detail."),
            max_tokens=200,
            temperature=1.0,
            seed=seed,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        next(chunks)
        next(chunks)  # the reply is streaming
        beside.append(caption())
        usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
        reply_tokens.append(usage[-1].completion_tokens if usage else 0)
    return {"alone_s": alone, "beside_s": statistics.median(beside), "reply_tokens": reply_tokens}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="glue directory (default: the installed demo model)")
    parser.add_argument("--clip", type=Path, default=SHARED_CLIP)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    from openai import OpenAI

    urls = {
        "data URL": "data:video/mp4;base64," + base64.b64encode(args.clip.read_bytes()).decode(),
        "file URL": args.clip.resolve().as_uri(),
    }
    video_url = urls["data URL"]
    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="prism-vlm-bench-serve-"))
    for label, max_batch in (("one at a time", 1), ("batching", args.max_batch)):
        port, log = free_port(), work / f"server-{max_batch}.log"
        server = start_server(args.model, max_batch, port, log, args.clip.resolve().parent)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        try:
            wait_until_up(server, client, log)
            ask(client, video_url, 0)  # warm-up
            results[label] = {kind: load(client, url, args.requests) for kind, url in urls.items()}
            if max_batch > 1:
                results["head_of_line"] = head_of_line(client, video_url)
        finally:
            server.terminate()
            server.wait(timeout=60)
    line = results["head_of_line"]
    rows = ["| video sent as | server | req/s | median latency | p90 latency |", "|---|---|---:|---:|---:|"]
    for kind in urls:
        off, on = results["one at a time"][kind], results["batching"][kind]
        rows += [
            f"| {kind} | `--max-batch 1` (one at a time) | {off['requests_per_s']:.3f} | {off['median_s']:.2f} s "
            f"| {off['p90_s']:.2f} s |",
            f"| {kind} | `--max-batch {args.max_batch}` | {on['requests_per_s']:.3f} | {on['median_s']:.2f} s "
            f"| {on['p90_s']:.2f} s |",
            f"| {kind} | ratio | **{on['requests_per_s'] / off['requests_per_s']:.2f}x** "
            f"| **{on['median_s'] / off['median_s']:.2f}x** | |",
        ]
    rows += [
        "",
        f"Greedy caption alone {line['alone_s']:.2f} s; beside a streaming sampled reply {line['beside_s']:.2f} s "
        f"(**{line['beside_s'] / line['alone_s']:.2f}x**; the replies ran {line['reply_tokens']} tokens).",
    ]
    print("\n".join(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
