"""Which threads of the app run torch, and why it matters on CPU.

torch's intra-op parallelism on CPU is OpenMP (libgomp). Every OS thread that runs a parallel
region keeps a team of pool threads for as long as it lives, and once the teams together hold more
threads than there are cores, libgomp cuts the time its threads spin while they wait to almost
nothing: every parallel region then pays for putting threads to sleep and waking them, and a decode
step in a second thread is markedly slower than in the only thread that has run torch (BENCHMARKS.md,
"One thread runs torch", has the measurement).

So the app runs all its model work in one thread, the continuous batcher's worker
(:meth:`apps.service.ModelService.run_model_work`; search and zero-shot labels too), and loads its
models in a thread that ends before serving starts (:func:`run_in_passing_thread`), so that the
worker's team is the only one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_passing_thread(function: Callable[[], T], name: str = "prism-vlm-load") -> T:
    """``function()`` run in a new thread that ends with it (its OpenMP team goes with it); returns its
    result or raises its exception in the caller. Threads that ``function`` starts live on."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as error:  # noqa: BLE001 -- raised again in the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)  # Ctrl-C while loading ends the app
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
