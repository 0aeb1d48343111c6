"""What the app tests share: small limits for a test server, a free local port, the app served in a
subprocess and headless chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LIMITS = dict(max_upload_mb=0.25, max_duration_s=4.0, max_frames=8, max_new_tokens=16, concurrency=2, queue_size=16)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CHROMIUM = os.environ.get("PRISM_VLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def served_app(app_arguments: list[str], root: Path, extra_env: dict | None = None) -> Iterator[str]:
    """``prism-vlm app ARGUMENTS --port P`` in a subprocess (uploads and log under ``root``): its URL once it
    answers (a test failure with the log's end if it exits or does not answer within 180 s); stopped after."""
    import httpx
    import pytest

    port = free_port()
    env = dict(
        os.environ,
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(root / "uploads"),
        PYTHONUNBUFFERED="1",
        **(extra_env or {}),
    )
    command = [sys.executable, "-m", "vlm.cli.main", "app", *app_arguments, "--port", str(port)]
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"prism-vlm app exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prism-vlm app did not answer within 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def chromium_browser():
    """Debian's chromium, headless, driven by playwright (a test failure saying how to install it if missing)."""
    import pytest

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no chromium at {CHROMIUM}: install it with `apt-get install chromium` (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
