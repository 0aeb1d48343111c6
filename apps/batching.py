"""Requests that arrive together are served together: a micro-batcher for the app's model calls.

:class:`MicroBatcher` runs one worker thread. A request (:meth:`MicroBatcher.submit`) names a batch
key and an input; the worker takes the first waiting request and keeps collecting requests with the
same key until ``max_batch`` are in hand, or ``window_s`` seconds have passed, or ``more_coming()``
says no other request is on its way (in the app: being checked and decoded) -- so a lone request
never waits -- and calls ``run(key, inputs)`` once for all of them. Each request gets its own result
(or exception) through a :class:`concurrent.futures.Future`. When a batch fails, its requests are
retried one by one, so a request that fails fails alone. A request whose caller gave up before its
batch started (``future.cancel()``) is dropped from the batch. Requests with other keys wait for the
next round, in arrival order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

_POLL_S = 0.01  # how often a waiting batch rechecks more_coming()


@dataclass(frozen=True)
class BatchingConfig:
    """window_s: how long the first request of a batch may wait for others that are on their way
    (seconds); max_batch: most requests served by one model call (1 turns batching off)."""

    window_s: float = 0.5
    max_batch: int = 8

    def __post_init__(self) -> None:
        if not (0 <= self.window_s <= 10):
            raise ValueError(f"window_s must be in [0, 10] seconds, got {self.window_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")


class MicroBatcher:
    """Collects requests into batches and runs ``run(key, inputs) -> outputs`` (one output per input,
    in order) in a worker thread. See the module docstring."""

    def __init__(
        self,
        run: Callable[[Hashable, Sequence[Any]], Sequence[Any]],
        config: BatchingConfig | None = None,
        name: str = "batcher",
        more_coming: Callable[[], bool] = lambda: True,
    ):
        self._run = run
        self._more_coming = more_coming
        self.config = config or BatchingConfig()
        self._waiting: deque[tuple[Hashable, Any, Future]] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self.batch_sizes: list[int] = []  # sizes of the batches run (for tests and benchmarks)
        self._worker = threading.Thread(target=self._serve, name=f"prism-vlm-{name}", daemon=True)
        self._worker.start()

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue one request; its Future resolves to its output (or raises its exception)."""
        future: Future = Future()
        with self._condition:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append((key, item, future))
            self._condition.notify()
        return future

    def __call__(self, key: Hashable, item: Any) -> Any:
        """Submit and wait for the result."""
        return self.submit(key, item).result()

    def close(self) -> None:
        """Stop the worker once the requests already queued are served."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._worker.join(timeout=5)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            key, entries = batch
            entries = [(item, future) for item, future in entries if future.set_running_or_notify_cancel()]
            if not entries:
                continue
            self.batch_sizes.append(len(entries))
            try:
                outputs = list(self._run(key, [item for item, _ in entries]))
                if len(outputs) != len(entries):
                    raise RuntimeError(f"batch function returned {len(outputs)} outputs for {len(entries)} inputs")
            except Exception as error:  # noqa: BLE001 -- retried alone, so the failing request fails alone
                if len(entries) == 1:
                    entries[0][1].set_exception(error)
                    continue
                for item, future in entries:
                    self._settle(future, key, item)
                continue
            for (_, future), output in zip(entries, outputs):
                future.set_result(output)

    def _settle(self, future: Future, key: Hashable, item: Any) -> None:
        try:
            future.set_result(list(self._run(key, [item]))[0])
        except Exception as error:  # noqa: BLE001 -- handed to the caller
            future.set_exception(error)

    def _next_batch(self) -> tuple[Hashable, list[tuple[Any, Future]]] | None:
        """Wait for a first request, then gather requests with its key for up to window_s."""
        with self._condition:
            while not self._waiting and not self._closed:
                self._condition.wait()
            if self._closed and not self._waiting:
                return None
            key, item, future = self._waiting.popleft()
            entries = [(item, future)]
            deadline = time.monotonic() + self.config.window_s
            while len(entries) < self.config.max_batch:
                for index, (other_key, other_item, other_future) in enumerate(self._waiting):
                    if other_key == key:
                        del self._waiting[index]
                        entries.append((other_item, other_future))
                        break
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed or not self._more_coming():
                        break
                    self._condition.wait(min(remaining, _POLL_S))
            return key, entries
