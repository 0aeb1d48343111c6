"""The app's private upload folder: created at start, removed at exit (SIGTERM included), and
removed at the next start when a killed server (SIGKILL, power loss) could not remove it."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

PREFIX = "prism-vlm-app-"
OWNER_FILE = "owner.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_upload_dirs(parent: str | os.PathLike | None = None) -> list[Path]:
    """Delete upload folders under ``parent`` (default: the system temporary folder) whose owning
    server is gone. Folders without a readable owner file are left alone (not ours to judge).
    Returns the folders removed."""
    removed = []
    for folder in Path(parent or tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            pid = int((folder / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def private_upload_dir(parent: str | os.PathLike | None = None) -> Path:
    """A new upload folder owned by this process, removed when it exits normally or on SIGTERM;
    stale folders of killed servers are removed first."""
    remove_stale_upload_dirs(parent)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    (folder / OWNER_FILE).write_text(f"{os.getpid()}\n")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    # The default SIGTERM action ends the process without running atexit handlers.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return folder


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)
