"""The app's private upload folder: created at start, removed at exit (SIGTERM included), and
removed at the next start when a killed server (SIGKILL, power loss) could not remove it.

Gradio streams each upload into a temporary file (``tmp*``) directly in that folder and moves it
into a subfolder once the upload is complete. An upload refused for its size, or abandoned by a
client that went away, leaves its temporary file behind: :class:`AbandonedUploadSweeper` deletes
those once nothing has been written to them for :data:`UPLOAD_IDLE_S` seconds.

:func:`use_private_upload_dir` must run before Gradio is imported: Gradio reads ``GRADIO_TEMP_DIR``
once, at import, for some of its folders.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

PREFIX = "prism-vlm-app-"
OWNER_FILE = "owner.pid"
UPLOAD_IDLE_S = 120.0
"""An upload's temporary file untouched for this long belongs to a refused or abandoned upload."""


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


def use_private_upload_dir() -> Path:
    """Point ``GRADIO_TEMP_DIR`` at a new private upload folder (unless it is set already) and return
    the folder. Raises RuntimeError when it is not set and Gradio was imported before (Gradio would
    keep its default folder for part of its files)."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        if "gradio" in sys.modules:
            raise RuntimeError("use_private_upload_dir() must run before gradio is imported")
        os.environ["GRADIO_TEMP_DIR"] = str(private_upload_dir())
    return Path(os.environ["GRADIO_TEMP_DIR"])


def sweep_abandoned_uploads(folder: str | os.PathLike, idle_s: float = UPLOAD_IDLE_S) -> list[Path]:
    """Delete the upload temporary files (``tmp*`` directly in ``folder``) not written to for
    ``idle_s`` seconds. Returns the files deleted."""
    removed = []
    cutoff = time.time() - idle_s
    for path in Path(folder).glob("tmp*"):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # gone already, or moved into place meanwhile
    return removed


class AbandonedUploadSweeper:
    """A daemon thread that runs :func:`sweep_abandoned_uploads` on ``folder`` every ``every_s`` seconds."""

    def __init__(self, folder: str | os.PathLike, idle_s: float = UPLOAD_IDLE_S, every_s: float = 30.0):
        self.folder, self.idle_s, self.every_s = Path(folder), idle_s, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-sweeper", daemon=True)

    def start(self) -> AbandonedUploadSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            sweep_abandoned_uploads(self.folder, self.idle_s)
