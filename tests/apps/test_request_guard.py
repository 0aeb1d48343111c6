"""apps.request_guard.RequestGuard on its own, as an ASGI app in front of a stand-in: remote files refused on
every file route spelling, every POST body checked whatever content type it declares, deep JSON refused,
the multipart boundary read whatever the case of its name."""

from __future__ import annotations

import asyncio
import json

import pytest

from apps.request_guard import MAX_JSON_DEPTH, RequestGuard

pytestmark = pytest.mark.quick

REMOTE_FILE = {"path": "https://prism-vlm-test.invalid/clip.mp4", "meta": {"_type": "gradio.FileData"}}


def _request(guard: RequestGuard, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, whether the wrapped app was reached, the body it read) for one request through ``guard``."""
    reached: dict = {}

    async def app(scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        reached["body"] = b"".join(chunks)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard.app = app
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": raw_headers}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], "body" in reached, reached.get("body")


def _guard() -> RequestGuard:
    return RequestGuard(None, max_upload_bytes=1000, max_files=1, max_json_bytes=10_000)


@pytest.mark.parametrize(
    "path",
    [
        "/gradio_api/file=https://host.invalid/x.mp4",
        "/gradio_api/file/https://host.invalid/x.mp4",  # the slash spelling reached Gradio's URL proxy
        "/gradio_api/file/http%3A//host.invalid/x.mp4",
        "/file=//host.invalid/share/x.mp4",
    ],
)
def test_remote_files_are_refused_on_every_file_route_spelling(path):
    status, reached, _ = _request(_guard(), "GET", path)
    assert status == 403 and not reached


def test_local_files_pass():
    status, reached, _ = _request(_guard(), "GET", "/gradio_api/file=/tmp/uploads/clip.mp4")
    assert status == 200 and reached


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON", "application/vnd.x+json", "text/plain", ""]
)
def test_every_post_body_is_checked_whatever_its_content_type(content_type):
    """A remote FileData in a body declared as anything (a wrong-case JSON type used to skip the check)."""
    body = json.dumps({"data": [REMOTE_FILE, 8, 4], "fn_index": 0}).encode()
    headers = {"content-type": content_type} if content_type else {}
    status, reached, _ = _request(_guard(), "POST", "/gradio_api/call/caption", body, headers)
    assert status == 400 and not reached
    big = b'{"data": ["' + b"x" * 20_000 + b'"]}'
    status, reached, _ = _request(_guard(), "POST", "/gradio_api/call/caption", big, headers)
    assert status == 413 and not reached  # over max_json_bytes whatever the declared type
    fine = json.dumps({"data": ["a question", 8, 4], "fn_index": 0}).encode()
    status, reached, seen = _request(_guard(), "POST", "/gradio_api/call/ask", fine, headers)
    assert status == 200 and seen == fine  # replayed untouched


def test_deep_json_is_a_clear_400():
    for depth in (MAX_JSON_DEPTH + 1, 1000, 5000):
        body = ("[" * depth + "]" * depth).encode()
        status, reached, _ = _request(
            _guard(), "POST", "/gradio_api/queue/join", body, {"content-type": "application/json"}
        )
        assert status == 400 and not reached
    shallow = ("[" * 10 + "]" * 10).encode()
    assert _request(_guard(), "POST", "/gradio_api/queue/join", shallow, {"content-type": "application/json"})[0] == 200


def test_the_multipart_boundary_is_read_whatever_the_case_of_its_name():
    parts = b"".join(b"--B\r\ncontent-disposition: form-data; name=files\r\n\r\nx\r\n" for _ in range(5)) + b"--B--\r\n"
    for header in (
        "multipart/form-data; boundary=B",
        "multipart/form-data; BOUNDARY=B",
        "Multipart/Form-Data; Boundary=B",
    ):
        status, reached, _ = _request(_guard(), "POST", "/gradio_api/upload", parts, {"content-type": header})
        assert status == 400, header  # five files, one allowed
    one = b"--B\r\ncontent-disposition: form-data; name=files\r\n\r\nx\r\n--B--\r\n"
    assert (
        _request(_guard(), "POST", "/gradio_api/upload", one, {"content-type": "multipart/form-data; BOUNDARY=B"})[0]
        == 200
    )


def test_failed_logins_slow_the_next_attempts_from_that_client(monkeypatch):
    """Gradio answers a wrong login with 400: after FREE_LOGIN_FAILURES of them from one address, each next
    attempt from it waits (doubling, bounded); another address is not slowed; a success clears the record."""
    from apps import request_guard
    from apps.request_guard import FREE_LOGIN_FAILURES, MAX_LOGIN_DELAY_S

    waits = []

    async def no_real_wait(seconds):
        waits.append(seconds)

    monkeypatch.setattr(request_guard.asyncio, "sleep", no_real_wait)
    guard = _guard()
    answer = {"status": 400}

    async def login_app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": answer["status"], "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def attempt(client: str) -> None:
        guard.app = login_app
        scope = {"type": "http", "method": "POST", "path": "/login", "headers": [], "client": (client, 5000)}
        messages = [{"type": "http.request", "body": b"username=a&password=b", "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            pass

        asyncio.run(request_guard.RequestGuard.__call__(guard, scope, receive, send))

    for _ in range(FREE_LOGIN_FAILURES):
        attempt("10.0.0.1")
    assert waits == []
    for _ in range(8):
        attempt("10.0.0.1")
    assert waits[:3] == [0.25, 0.5, 1.0] and max(waits) == MAX_LOGIN_DELAY_S and waits == sorted(waits)
    attempt("10.0.0.2")  # another client: not slowed
    assert len(waits) == 8
    answer["status"] = 200
    attempt("10.0.0.1")  # a success (after its wait) clears the record
    answer["status"] = 400
    attempt("10.0.0.1")
    assert len(waits) == 9 and guard.login_delay("10.0.0.1") == 0.0


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/gradio_api/process_recording"),  # re-encodes uploads with ffmpeg outside the queue
        ("GET", "/gradio_api/proxy=https://prism-vlm-test.invalid/x"),
        ("POST", "/gradio_api/vibe-edit"),
        ("GET", "/gradio_api/custom_component/a/b/c/d.js"),
        ("GET", "/gradio_api/dev/reload"),
        ("GET", "/monitoring"),
        ("GET", "/gradio_api/mcp/sse"),
        ("GET", "/gradio_api/call/caption/../../etc"),
        ("GET", "/nothing-here"),
    ],
)
def test_routes_the_app_does_not_use_are_not_found(method, path):
    status, reached, _ = _request(_guard(), method, path, b"{}" if method == "POST" else b"")
    assert status == 404 and not reached


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/"),
        ("GET", "/config"),
        ("GET", "/assets/index-abc.js"),
        ("GET", "/gradio_api/info"),
        ("GET", "/gradio_api/heartbeat/abc123"),
        ("POST", "/gradio_api/queue/join"),
        ("GET", "/gradio_api/queue/data"),
        ("POST", "/gradio_api/upload"),
        ("POST", "/gradio_api/call/timeline"),
        ("GET", "/gradio_api/call/timeline/0a1b2c"),
        ("GET", "/gradio_api/file=/tmp/uploads/clip.mp4"),
        ("POST", "/login"),
    ],
)
def test_routes_the_page_and_its_api_use_pass(method, path):
    status, reached, _ = _request(_guard(), method, path, b"{}" if method == "POST" else b"")
    assert status == 200 and reached
