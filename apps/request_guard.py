"""An ASGI middleware in front of the Gradio app that keeps requests local and small.

Gradio fetches a file input given as a URL (``{"path": "https://...", "meta": {"_type":
"gradio.FileData"}}``) and proxies ``/gradio_api/file=https://...``; its upload route takes up to
1,000 files per request; it serves routes the app never uses (``process_recording`` re-encodes
uploads with ffmpeg outside the queue, ``proxy=``, ``vibe-edit``, ``custom_component``, ...). The app
needs none of that, so :class:`RequestGuard` refuses, before Gradio sees the request:

- a request for ``.../file=<remote URL>`` or ``.../file/<remote URL>`` (any file route spelling, 403);
- a path outside :data:`ALLOWED_ROUTES`, the routes the page and its API use (404);
- a POST body other than an upload, whatever content type it declares (any case, any parameters), larger
  than ``max_json_bytes`` (413), holding a file whose ``path`` is a remote URL (400), or JSON nested
  deeper than :data:`MAX_JSON_DEPTH` (400);
- an upload larger than ``max_upload_bytes`` in all, announced or streamed (413), or holding more
  than ``max_files`` files (400; the multipart boundary is read whatever the case of its name).

Login attempts are slowed per client: after :data:`FREE_LOGIN_FAILURES` failed logins from one address,
each further attempt from it waits twice as long as the one before (from a quarter second, at most
:data:`MAX_LOGIN_DELAY_S`) before it is answered; a successful login clears the address's record.

Everything else passes through untouched.
"""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import unquote

_REMOTE = re.compile(r"^\s*([a-zA-Z][a-zA-Z0-9+.-]*:|//|\\\\)")
"""A path that names a remote resource: any URL scheme (http:, https:, ftp:, data: ...) or a
network path (//host, \\\\host). Local upload paths never start like that (a Windows drive letter
is one letter, which this also catches; the app runs on POSIX servers)."""
_UPLOAD_OVERHEAD = 64 * 1024  # multipart headers and boundaries around the file bytes
_FILE_ROUTE = re.compile(r"/file[=/]")  # Gradio's file routes: /file=PATH and /file/PATH
MAX_JSON_DEPTH = 64  # the app's requests nest a few levels; deeper JSON is refused, not parsed further
FREE_LOGIN_FAILURES = 5  # failed logins from one address before its attempts are slowed
MAX_LOGIN_DELAY_S = 8.0
_MAX_TRACKED_CLIENTS = 10_000  # addresses remembered (the oldest forgotten first): bounded memory
ALLOWED_ROUTES = re.compile(
    r"""^/(?:
        |favicon\.ico|robots\.txt|manifest\.json|theme\.css|pwa_icon(?:/\d+)?
        |login/?|logout/?|config/?
        |(?:assets|static|svelte)/.+
        |gradio_api/(?:
            info/?|openapi\.json|config/?|login_check/?|app_id/?|user/?|token/?|startup-events|theme\.css
            |heartbeat/[^/]+|queue/join|queue/data|cancel|reset/?|upload|upload_progress
            |file=.+|file/.+
            |(?:call|run|api)/[A-Za-z0-9_-]+/?|call/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+
        )
    )$""",
    re.VERBOSE,
)
"""The paths the page and its API use: the page and its assets, login, configuration, the queue,
uploads, files and the named API endpoints. Everything else is 404."""


def is_remote_path(path: object) -> bool:
    """True for a string that names a URL or network path rather than a file on this server."""
    return isinstance(path, str) and bool(_REMOTE.match(path))


def _remote_files(value: object) -> list[str]:
    """Remote ``path`` values of every Gradio FileData-like dict inside a JSON value; a value nested deeper
    than :data:`MAX_JSON_DEPTH` is refused (400)."""
    found: list[str] = []
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth > MAX_JSON_DEPTH:
            raise _Refused(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(item, dict):
            if is_remote_path(item.get("path")):
                found.append(item["path"])
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return found


def _names_remote_file(path: str) -> bool:
    """True when a request path asks a file route (``/file=`` or ``/file/``) for a remote URL."""
    return any(is_remote_path(path[match.end() :]) for match in _FILE_ROUTE.finditer(path))


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RequestGuard:
    """ASGI middleware (see the module docstring).

    app: the wrapped ASGI app; max_upload_bytes: largest accepted file; max_files: files per upload
    request; max_json_bytes: largest accepted JSON request body; api_prefix: the path of a mounted
    OpenAI-compatible API (``apps.openai_server``), passed through untouched: it checks its own keys, body
    size and media.
    """

    def __init__(
        self,
        app,
        max_upload_bytes: int,
        max_files: int = 1,
        max_json_bytes: int = 2 << 20,
        api_prefix: str | None = None,
    ):
        self.app = app
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_files = int(max_files)
        self.max_json_bytes = int(max_json_bytes)
        self.api_prefix = api_prefix
        self._login_failures: dict[str, int] = {}

    def login_delay(self, client: str) -> float:
        """Seconds the next login attempt from ``client`` waits (0 until it has failed FREE_LOGIN_FAILURES times)."""
        excess = self._login_failures.get(client, 0) - FREE_LOGIN_FAILURES
        return 0.0 if excess < 0 else min(0.25 * 2**excess, MAX_LOGIN_DELAY_S)

    def _record_login(self, client: str, status: int) -> None:
        if status < 400:
            self._login_failures.pop(client, None)
            return
        self._login_failures[client] = self._login_failures.pop(client, 0) + 1  # most recent last
        while len(self._login_failures) > _MAX_TRACKED_CLIENTS:
            self._login_failures.pop(next(iter(self._login_failures)))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = unquote(scope.get("path", ""))
        method = scope.get("method", "GET")
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        if self.api_prefix and (path == self.api_prefix or path.startswith(self.api_prefix + "/")):
            return await self.app(scope, receive, send)  # the mounted OpenAI API: its own keys and limits
        try:
            if _names_remote_file(path):
                raise _Refused(403, "This app does not fetch remote files.")
            if not ALLOWED_ROUTES.match(path):
                raise _Refused(404, "Not found.")
            if method == "POST" and path.rstrip("/").endswith("/upload"):
                receive = self._upload_receive(headers, receive)
            elif method == "POST":  # whatever content type it declares: Gradio may read it as JSON anyway
                receive = await self._checked_json(headers, receive)
        except _Refused as refused:
            return await _respond(send, refused.status, refused.message)
        if method == "POST" and path.rstrip("/").endswith("/login"):
            client = (scope.get("client") or ("unknown", 0))[0]
            delay = self.login_delay(client)
            if delay:
                await asyncio.sleep(delay)
            send = self._watching_login(client, send)
        try:
            return await self.app(scope, receive, send)
        except _Refused as refused:  # raised while the app streamed an upload
            return await _respond(send, refused.status, refused.message)

    async def _checked_json(self, headers: dict, receive):
        """Read the whole (bounded) JSON body, refuse remote file paths, then replay it."""
        announced = headers.get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > self.max_json_bytes:
            raise _Refused(413, f"Request body over {self.max_json_bytes} bytes.")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return _replay(b"".join(chunks), receive, pending=message)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_json_bytes:
                raise _Refused(413, f"Request body over {self.max_json_bytes} bytes.")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            parsed = json.loads(body) if body else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            parsed = None  # not JSON (a login form, say): not ours to judge
        except RecursionError:
            raise _Refused(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels.") from None
        remote = _remote_files(parsed)
        if remote:
            raise _Refused(400, "This app takes uploaded files only, not URLs.")
        return _replay(body, receive)

    def _watching_login(self, client: str, send):
        """A ``send`` that records whether the login it answers failed (a 4xx or 5xx status)."""

        async def watched(message):
            if message.get("type") == "http.response.start":
                self._record_login(client, int(message.get("status", 200)))
            await send(message)

        return watched

    def _upload_receive(self, headers: dict, receive):
        """Count bytes and multipart parts as the upload streams in; refuse past the limits."""
        limit = self.max_upload_bytes * self.max_files + _UPLOAD_OVERHEAD * self.max_files
        announced = headers.get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            raise _Refused(413, f"Upload over {self.max_upload_bytes} bytes.")
        match = re.search(r"boundary=\"?([^\";]+)\"?", headers.get("content-type", ""), re.IGNORECASE)
        delimiter = ("--" + match.group(1)).encode("latin-1") if match else None
        state = {"size": 0, "parts": 0, "tail": b""}

        async def guarded():
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                state["size"] += len(chunk)
                if state["size"] > limit:
                    raise _Refused(413, f"Upload over {self.max_upload_bytes} bytes.")
                if delimiter is not None:
                    window = state["tail"] + chunk
                    state["parts"] += window.count(delimiter)
                    state["tail"] = window[-(len(delimiter) - 1) :] if len(delimiter) > 1 else b""
                    # n files -> n opening delimiters plus the closing one
                    if state["parts"] - 1 > self.max_files:
                        raise _Refused(400, f"At most {self.max_files} file(s) per upload.")
            return message

        return guarded


def _replay(body: bytes, receive, pending: dict | None = None):
    """A ``receive`` that yields the already read ``body`` once, then ``pending`` if given, then
    defers to the server's ``receive`` (which reports the client's disconnect when it comes)."""
    queue = [{"type": "http.request", "body": body, "more_body": False}] + ([pending] if pending else [])

    async def replayed():
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed


async def _respond(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
