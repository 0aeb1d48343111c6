"""The app's model service under hostile uploads: resident memory of the process during and after
each hostile file, and how long a normal caption asked at the same time takes against alone.

    python scripts/bench_hostile_uploads.py [--model DIR] [--clip FILE] [--work DIR]

The service is the app's own (``apps.service.ModelService`` with the app's default limits), in this
process, on the demo model by default; the hostile files are tests/helpers/hostile_media.py's (see
scripts/bench_hostile_inputs.py). For each file: the service's caption of it (refused or answered)
runs beside a caption of ``--clip`` (default: the app's first example clip).
Memory is the process's resident set (VmRSS of /proc/self/status) sampled every 10 ms; the idle level is
taken after one warm-up caption. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class MemorySampler:
    """The highest resident memory seen while running (sampled every 10 ms)."""

    def __init__(self):
        self.peak = resident_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _bench_hostile_inputs():
    """scripts/bench_hostile_inputs.py as a module (it makes the hostile files)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_hostile_inputs", Path(__file__).with_name("bench_hostile_inputs.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="glue directory (default: the demo model)")
    parser.add_argument("--clip", type=Path, default=None, help="the normal clip captioned beside each file")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "prism-vlm-bench-hostile")
    args = parser.parse_args(argv)

    from apps.limits import AppLimits
    from apps.service import AppInputError, ModelService
    from apps.video_chat import default_examples
    from vlm.hub import default_model_dir
    from vlm.model import load_model

    model_dir = args.model or default_model_dir()
    service = ModelService(load_model(model_dir, device="cpu"), AppLimits(), model_dir=model_dir)
    clip = args.clip or next(iter(default_examples()), None)
    if clip is None:
        raise SystemExit("no clip: pass --clip FILE")
    files = _bench_hostile_inputs().make_upload_files(args.work)

    def timed_caption() -> float:
        began = time.perf_counter()
        service.caption(clip)
        return time.perf_counter() - began

    timed_caption()  # warm-up
    alone = sorted(timed_caption() for _ in range(3))[1]
    idle = resident_mb()
    rows = [
        f"Idle resident memory after a warm-up caption: {idle:.0f} MB; a normal caption alone: {alone:.2f} s "
        "(median of 3).",
        "",
        "| upload | outcome | CPU s of the request | peak RSS over idle (MB) | RSS after, over idle (MB) "
        "| normal caption beside it (s) | ratio to alone |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, path in files.items():
        outcome = {}

        def hostile(path=path, outcome=outcome):
            cpu = time.thread_time()
            try:
                service.caption(path)
                outcome["text"] = "answered"
            except AppInputError as error:
                outcome["text"] = "refused: " + str(error)[:70]
            outcome["cpu"] = time.thread_time() - cpu

        with MemorySampler() as sampler:
            worker = threading.Thread(target=hostile)
            worker.start()
            beside = timed_caption()
            worker.join()
        after = resident_mb()
        rows.append(
            f"| {name} | {outcome['text']} | {outcome['cpu']:.2f} | {sampler.peak - idle:.0f} | {after - idle:.0f} "
            f"| {beside:.2f} | {beside / alone:.2f} |"
        )
    service.close()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
