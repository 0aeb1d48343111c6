"""Decoding clips in worker processes so that one bad clip costs only itself.

:func:`decoded_batches` runs a decode dataset (one clip per item; the item reports its own decode
error) through a DataLoader whose workers start from a forkserver. A worker that dies -- killed for
memory, a segfault in a codec -- would abort the whole job, and every resume would die on the same
clip again. Here the batch it was decoding is redone clip by clip, each in a process of its own; a
clip whose process dies becomes an error item (``dataset.failed_item``) and the job carries on with
a fresh loader. Worker processes also die with the job: each exits within a second or two of the
job's process, however that ended (a SIGKILL included).

A dataset for these functions: ``__len__``, ``__getitem__(index)`` that never raises for a bad
clip, and ``failed_item(index, message)`` building the item of a clip whose decoding process died.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator

import torch


def decoding_worker_context(num_workers: int) -> str | None:
    """The DataLoader ``multiprocessing_context`` for ``num_workers`` decoding worker processes:
    "forkserver" where available, None with no workers (or no forkserver).

    Forking a process that already runs threads (a web server, tqdm's monitor, torch's pools) can
    deadlock the child on a lock held by another thread at fork time; forkserver workers start from
    a clean single-threaded server instead.
    """
    return "forkserver" if num_workers > 0 and "forkserver" in multiprocessing.get_all_start_methods() else None


def exit_with_job(job_pid: int, *_ignored) -> None:
    """Make this worker process exit as soon as the job's process ``job_pid`` is gone (killed with
    SIGKILL, say): a daemon thread checks once a second. (A worker's parent is the forkserver, not
    the job, so neither the kernel's parent-death signal nor torch's own watchdog notices.) Used as
    the DataLoader ``worker_init_fn`` (``functools.partial(exit_with_job, os.getpid())``)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(job_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="exit-with-job", daemon=True).start()


def _keep_items(items):
    return items


def decoded_batches(dataset, batch_size: int, num_workers: int) -> Iterator[list]:
    """Lists of up to ``batch_size`` items of ``dataset``, in order, decoded by ``num_workers``
    processes (0: in this process, where a crash cannot be isolated). See the module docstring."""
    total = len(dataset)
    start = 0
    while start < total:
        workers = min(num_workers, total - start)
        context = decoding_worker_context(workers)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, range(start, total)),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_keep_items,
            multiprocessing_context=context,
            worker_init_fn=functools.partial(exit_with_job, os.getpid()) if workers else None,
        )
        position = start
        try:
            for batch in loader:
                position += len(batch)
                yield batch
            return
        except RuntimeError as error:
            if not workers or "DataLoader worker" not in str(error):
                raise
        # A worker died while decoding the batch at `position`: each of its clips alone.
        end = min(position + batch_size, total)
        yield [decode_isolated(dataset, index, context) for index in range(position, end)]
        start = end


def decode_isolated(dataset, index: int, context: str | None = None):
    """``dataset[index]`` computed in a process of its own; ``dataset.failed_item(index, reason)``
    when that process dies before answering."""
    ctx = multiprocessing.get_context(context or decoding_worker_context(1) or "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_decode_into, args=(dataset, index, sender, os.getpid()), daemon=True)
    process.start()
    sender.close()
    try:
        item = receiver.recv()
    except EOFError:
        item = None
    process.join()
    receiver.close()
    if item is None:
        code = process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return dataset.failed_item(index, f"the decoding process died ({how})")
    return item


def _decode_into(dataset, index: int, sender, job_pid: int) -> None:
    exit_with_job(job_pid)
    sender.send(dataset[index])
    sender.close()
