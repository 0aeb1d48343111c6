"""A decode dataset for tests of encoder.video.workers: items ``(index, "ok", None)``; the process
decoding an index in ``crash`` is killed with SIGKILL, as the OOM killer or a codec segfault would."""

from __future__ import annotations

import os
import signal
import time


class CrashingDataset:
    def __init__(self, size: int, crash: set[int] = frozenset(), seconds_per_item: float = 0.0):
        self.size, self.crash, self.seconds_per_item = size, set(crash), seconds_per_item

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        time.sleep(self.seconds_per_item)
        if index in self.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        return index, "ok", None

    def failed_item(self, index: int, message: str):
        return index, None, message
