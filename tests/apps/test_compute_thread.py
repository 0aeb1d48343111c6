"""apps.compute_thread: the app loads its models in a thread that ends before serving starts."""

from __future__ import annotations

import threading

import pytest

from apps.compute_thread import run_in_passing_thread

pytestmark = pytest.mark.quick


def test_runs_in_another_thread_that_has_ended_and_returns_the_result():
    seen = {}

    def work():
        seen["thread"] = threading.current_thread()
        return 42

    assert run_in_passing_thread(work) == 42
    assert seen["thread"] is not threading.current_thread()
    assert not seen["thread"].is_alive()


def test_its_exception_is_raised_in_the_caller():
    def work():
        raise FileNotFoundError("no default model is installed")

    with pytest.raises(FileNotFoundError, match="no default model"):
        run_in_passing_thread(work)


def test_threads_it_starts_live_on():
    started = threading.Event()
    release = threading.Event()

    def work():
        worker = threading.Thread(target=lambda: (started.set(), release.wait(10)), daemon=True)
        worker.start()
        return worker

    worker = run_in_passing_thread(work)
    assert started.wait(10) and worker.is_alive()
    release.set()
    worker.join(10)
