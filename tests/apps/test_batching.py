"""apps.batching.MicroBatcher: requests that arrive together run together; failures stay alone."""

from __future__ import annotations

import threading
import time

import pytest

from apps.batching import BatchingConfig, MicroBatcher

pytestmark = pytest.mark.quick


def doubling(calls):
    def run(key, inputs):
        calls.append((key, list(inputs)))
        if any(item == "poison" for item in inputs):
            raise ValueError("poisoned batch")
        return [item * 2 for item in inputs]

    return run


def test_requests_arriving_together_share_one_call_in_order():
    calls = []
    with MicroBatcher(doubling(calls), BatchingConfig(window_s=0.2, max_batch=8)) as batcher:
        futures = [batcher.submit("k", i) for i in range(5)]
        assert [f.result(timeout=10) for f in futures] == [0, 2, 4, 6, 8]
        assert calls == [("k", [0, 1, 2, 3, 4])] and batcher.batch_sizes == [5]


def test_batches_respect_max_batch_and_keys():
    calls = []
    with MicroBatcher(doubling(calls), BatchingConfig(window_s=0.2, max_batch=2)) as batcher:
        futures = [batcher.submit(key, i) for i, key in enumerate("aabab")]
        assert [f.result(timeout=10) for f in futures] == [0, 2, 4, 6, 8]
        assert all(len(inputs) <= 2 for _, inputs in calls)
        assert all({key} == {"aabab"[i] for i in inputs} for key, inputs in calls)  # one key per call


def test_a_failing_request_fails_alone():
    calls = []
    with MicroBatcher(doubling(calls), BatchingConfig(window_s=0.2, max_batch=8)) as batcher:
        futures = [batcher.submit("k", item) for item in (1, "poison", 3)]
        assert futures[0].result(timeout=10) == 2 and futures[2].result(timeout=10) == 6
        with pytest.raises(ValueError, match="poisoned"):
            futures[1].result(timeout=10)


def test_a_cancelled_waiting_request_is_dropped():
    calls = []
    started = threading.Event()

    def slow(key, inputs):
        started.set()
        time.sleep(0.3)
        return doubling(calls)(key, inputs)

    with MicroBatcher(slow, BatchingConfig(window_s=0.0, max_batch=8)) as batcher:
        first = batcher.submit("k", 1)
        started.wait(5)
        waiting = batcher.submit("k", 2)
        assert waiting.cancel()  # the caller went away while the first batch ran
        third = batcher.submit("k", 3)
        assert first.result(timeout=10) == 2 and third.result(timeout=10) == 6
        assert [inputs for _, inputs in calls] == [[1], [3]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        BatchingConfig(max_batch=0)
    with pytest.raises(ValueError):
        BatchingConfig(window_s=-1)
