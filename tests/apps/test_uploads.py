"""apps.uploads: the private upload folder is Gradio's from its import on, and the temporary files
of refused or abandoned uploads are swept once idle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.uploads import AbandonedUploadSweeper, sweep_abandoned_uploads

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.quick
def test_idle_upload_temporaries_are_swept_and_nothing_else(tmp_path):
    stale, fresh = tmp_path / "tmpabc123", tmp_path / "tmpdef456"
    kept_upload = tmp_path / "0123abcd" / "clip.mp4"  # a finished upload, moved into its folder
    owner = tmp_path / "owner.pid"
    for path in (stale, fresh, kept_upload, owner):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 100)
    old = time.time() - 3600
    for path in (stale, kept_upload, owner):
        os.utime(path, (old, old))
    assert sweep_abandoned_uploads(tmp_path, idle_s=120) == [stale]
    assert not stale.exists() and fresh.exists() and kept_upload.exists() and owner.exists()


@pytest.mark.quick
def test_the_sweeper_thread_deletes_within_its_period(tmp_path):
    stale = tmp_path / "tmpabandoned"
    stale.write_bytes(b"partial upload")
    sweeper = AbandonedUploadSweeper(tmp_path, idle_s=0.0, every_s=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while stale.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sweeper.stop()
    assert not stale.exists()


def test_gradio_reads_the_private_folder_from_its_import_on(tmp_path):
    """The app's CLI points GRADIO_TEMP_DIR at its private folder before Gradio is imported: Gradio's
    import-time folders (process_recording's, the MCP server's) are the private one too."""
    code = (
        "import os, tempfile; tempfile.tempdir = os.environ['PARENT'];"
        "from apps.uploads import use_private_upload_dir; folder = use_private_upload_dir();"
        "import gradio.route_utils as r, gradio.screen_recording_utils as s;"
        "print(folder, r.DEFAULT_TEMP_DIR, s.DEFAULT_TEMP_DIR, sep='\\n')"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"} | {"PARENT": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder, *gradio_folders = done.stdout.split()
    assert Path(folder).parent == tmp_path and gradio_folders == [folder, folder]
