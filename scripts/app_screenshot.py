"""Screenshot of ``prism-vlm app`` in a real browser, for the README (docs/app_screenshot.png).

Starts ``python -m vlm.cli.main app`` (the default model, or ``--model DIR``) on a free local port, opens
it in Debian's chromium (headless, through Playwright), picks a shipped example clip, clicks
Describe, asks a closed-vocabulary question with candidates typed in, sends one chat message, labels
the clip zero-shot (when a video-text model is loaded), waits for every answer and saves a full-page
screenshot. Prints what the page showed as JSON.

    python scripts/app_screenshot.py [--model DIR] [--example cyan_star_moving_down] \
        [--question "what colour is the star?"] [--candidates red,green,blue,yellow,purple,white,orange,cyan] \
        [--chat "how is the star moving?"] [--out docs/app_screenshot.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load_test_app import REPO, free_port, start_server, stop_server, wait_until_up  # scripts/load_test_app.py

CHROMIUM = os.environ.get("PRISM_VLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def start_app(model: str | None, root: Path) -> tuple[subprocess.Popen, str]:
    """``prism-vlm app`` on a free local port (load_test_app's launcher, the app's default limits)."""
    port = free_port()
    log_path = root / "server.log"
    server = start_server(Path(model) if model else None, port, log_path, concurrency=2, queue_size=64)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(server, url, log_path)
    except (RuntimeError, TimeoutError) as error:
        server.kill()
        raise SystemExit(f"prism-vlm app did not start: {error}") from None
    return server, url


def wait_until_unchanged(read, timeout: float, quiet_s: float = 2.0) -> None:
    """Poll ``read()`` until its value has not changed for ``quiet_s`` seconds (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    value, changed = read(), time.monotonic()
    while time.monotonic() - changed < quiet_s and time.monotonic() < deadline:
        time.sleep(0.25)
        current = read()
        if current != value:
            value, changed = current, time.monotonic()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="glue directory (default: the app's default model)")
    parser.add_argument("--example", default="cyan_star_moving_down", help="stem of a clip in apps/examples")
    parser.add_argument("--question", default="what colour is the star?")
    parser.add_argument("--candidates", default="red,green,blue,yellow,purple,white,orange,cyan")
    parser.add_argument("--chat", default="how is the star moving?")
    parser.add_argument("--out", default=str(REPO / "docs" / "app_screenshot.png"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each answer")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"no chromium at {CHROMIUM}: apt-get install chromium (or set PRISM_VLM_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    wait_ms = int(args.timeout * 1000)
    with tempfile.TemporaryDirectory() as root:
        server, url = start_app(args.model, Path(root))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(url, wait_until="load")
                page.locator("#video-upload").wait_for(timeout=60_000)
                page.get_by_text(args.example.replace("_", " ")).first.click()
                page.wait_for_function(
                    "(document.querySelector('#frame-strip img') || {}).naturalWidth > 0", timeout=wait_ms
                )

                page.locator("#describe-button").click()
                page.wait_for_function(
                    "document.querySelector('#caption textarea').value.trim().length > 0", timeout=wait_ms
                )

                page.locator("#qa-question textarea").fill(args.question)
                page.locator("#qa-candidates textarea").fill(args.candidates)
                page.locator("#ask-button").click()
                page.wait_for_function(
                    "document.querySelector('#qa-answer textarea').value.trim().length > 0", timeout=wait_ms
                )

                page.locator("#chat-message textarea").fill(args.chat)
                page.locator("#chat-message textarea").press("Enter")
                page.wait_for_function(
                    "Array.from(document.querySelectorAll('#chat [data-testid=bot]')).some(e => e.innerText.trim().length > 0)",
                    timeout=wait_ms,
                )
                wait_until_unchanged(lambda: page.locator("#chat").inner_text(), args.timeout)  # the reply streams
                labels = page.locator("#zero-shot-button")
                if labels.count() and labels.is_visible():  # a video-text model is loaded: label the clip too
                    labels.click()
                    page.wait_for_function(
                        "document.querySelector('#zero-shot-output').innerText.includes('%')", timeout=wait_ms
                    )
                shown = {
                    "example": args.example,
                    "caption": page.locator("#caption textarea").input_value(),
                    "question": args.question,
                    "answer": page.locator("#qa-answer textarea").input_value(),
                    "chat": page.locator("#chat").inner_text(),
                    "zero_shot_labels": page.locator("#zero-shot-output").inner_text() if labels.count() else None,
                }
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out, full_page=True)
                browser.close()
        finally:
            stop_server(server)
    print(json.dumps(shown, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
