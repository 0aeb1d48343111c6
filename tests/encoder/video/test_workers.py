"""encoder.video.workers: a decoding process that dies costs only its clip; workers die with the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from encoder.video.workers import decode_isolated, decoded_batches
from tests.helpers.crashing_dataset import CrashingDataset

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]


def test_a_worker_killed_mid_clip_costs_only_that_clip():
    """Workers killed on items 3 and 6 (of 7, batches of 2): both recorded as failed, every other
    item decoded once, in order, and the job finishes."""
    items = [
        item for batch in decoded_batches(CrashingDataset(7, {3, 6}), batch_size=2, num_workers=2) for item in batch
    ]
    assert [index for index, _, _ in items] == list(range(7))
    failed = {index: error for index, value, error in items if value is None}
    assert set(failed) == {3, 6}
    assert all("the decoding process died (killed by signal 9)" in error for error in failed.values())


def test_decode_isolated_returns_the_item_or_a_failure():
    dataset = CrashingDataset(3, {1})
    assert decode_isolated(dataset, 0) == (0, "ok", None)
    index, value, error = decode_isolated(dataset, 1)
    assert (index, value) == (1, None) and "killed by signal 9" in error


def test_workers_exit_when_the_job_is_killed(tmp_path):
    """After `kill -9` of a job, its forkserver and decoding workers used to stay alive for good."""
    script = textwrap.dedent("""
        from encoder.video.workers import decoded_batches
        from tests.helpers.crashing_dataset import CrashingDataset
        if __name__ == "__main__":
            for batch in decoded_batches(CrashingDataset(8, seconds_per_item=120), 2, 2):
                pass
    """)
    (tmp_path / "job.py").write_text(script)
    job = subprocess.Popen(
        [sys.executable, str(tmp_path / "job.py")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        deadline = time.monotonic() + 60
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [p for p in psutil.Process(job.pid).children(recursive=True) if p.name() == "pt_data_worker"]
        assert len(workers) == 2
        helpers = psutil.Process(job.pid).children(recursive=True)
    finally:
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
    deadline = time.monotonic() + 20
    alive = helpers
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [p for p in helpers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for process in alive:
        process.kill()
    assert not alive, [p.name() for p in alive]
