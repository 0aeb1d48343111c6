"""An OpenAI-compatible chat-completions API over the app's model service (``prism-vlm serve``).

Routes (FastAPI; every ``/v1`` route behind the API keys when any are set):

- ``GET /v1/models``: the one model served, named :attr:`ServerConfig.model_name`.
- ``POST /v1/chat/completions``: ``messages`` whose content is a string or a list of parts: ``text``;
  ``video_url`` (a ``data:video/...;base64,`` URL; ``file://`` only inside
  ``allowed_local_media_path``; ``http(s)://`` only with ``allow_remote_media``, size- and
  time-limited); or several ``image_url`` parts (data URLs, or file/remote URLs under the same rules),
  read in order as the frames of one clip (what lmms-eval's and VLMEvalKit's OpenAI backends send). One
  video per conversation. System messages are accepted and not shown to the model (its chat template is
  the one it was trained with). ``temperature`` (0: greedy), ``top_p``, ``max_tokens`` /
  ``max_completion_tokens`` (clamped to the server's limit; the reply then ends with
  ``finish_reason: "length"``), ``stop`` (up to 4 strings), ``seed``, ``logprobs`` / ``top_logprobs``,
  ``stream`` (server-sent events in OpenAI's chunk format, ending in ``[DONE]``; ``stream_options:
  {"include_usage": true}`` adds a usage chunk), and vLLM's ``media_io_kwargs: {"video": {"num_frames":
  N}}`` (clamped to ``[1, max_frames]``) and ``ignore_eos`` (benchmarks: go on to ``max_tokens``).
- Closed-vocabulary answers: a request with ``"candidates": ["red", "blue", ...]`` gets every candidate
  ranked by its exact log-likelihood as the answer to the last user message (``prism-vlm ask
  --candidates``), in a top-level ``"candidates"`` list of ``{"answer", "probability", "log_likelihood"}``,
  best first; the message content is the best candidate.

Every request runs through the app's :class:`apps.service.ModelService` (its limits, clip checks and
decoding, and its one continuous batcher). Errors are OpenAI's error objects, never a traceback or a
server path: 400 (bad request), 401 (API key), 404 (route or model), 413 (body over the limit), 422
(not JSON of the right shape), 429 (queue full), 503 (shutting down).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import hmac
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from apps.service import AppInputError, ModelService
from encoder.common.errors import PrismVlmError
from encoder.video.decode import load_clip, pick_uniformly, resize_shorter_side
from vlm.inference.generation import GenerationSettings, IncrementalText
from vlm.serving.continuous_batching import BatcherClosedError

__all__ = ["ApiError", "ServerConfig", "build_openai_app"]

logger = logging.getLogger(__name__)

VIDEO_TYPES = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/mpeg": ".mpg",
    "image/gif": ".gif",
}
"""Media types a ``video_url`` data URL may declare, and the suffix its file gets."""
MAX_MESSAGES = 64
MAX_IMAGE_FRAMES = 256
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64


@dataclass(frozen=True)
class ServerConfig:
    """model_name: the name ``/v1/models`` lists and requests must use; api_keys: accepted bearer keys
    (empty: no key needed); allowed_local_media_path: the folder ``file://`` URLs may name (None: none);
    allow_remote_media: fetch ``http(s)://`` media (size-limited by the upload limit, ``remote_timeout_s``)."""

    model_name: str = "prism-vlm"
    api_keys: tuple[str, ...] = ()
    allowed_local_media_path: Path | None = None
    allow_remote_media: bool = False
    remote_timeout_s: float = 30.0


class ApiError(Exception):
    """A request the API refuses: HTTP ``status``, OpenAI's error ``kind`` (``type``), the ``param`` at fault."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


# ----------------------------------------------------------------------------- the request


@dataclass
class ChatRequest:
    """A checked chat-completions request: ``messages`` the user/assistant turns (text only), ``video``
    the media (a file path, or float32 frames [T, S, S, 3]; None: none), and the generation settings."""

    messages: list[dict]
    video: Path | np.ndarray | None
    settings: GenerationSettings
    num_frames: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    top_logprobs: int | None
    candidates: list[str] | None
    ignore_eos: bool = False


class MediaReader:
    """Turns ``video_url`` / ``image_url`` parts into what the model service reads, within the limits:
    media files go to a private temporary folder and are deleted when the request ends."""

    def __init__(self, service: ModelService, config: ServerConfig, folder: Path):
        self.service, self.config, self.folder = service, config, folder
        self.limits = service.limits

    def video_file(self, url: str, created: list[Path]) -> Path:
        """A video URL as a local file (written to the private folder unless it is an allowed local file)."""
        if url.startswith("data:"):
            media_type, data = self._data_url(url, "video_url")
            if media_type not in VIDEO_TYPES:
                raise ApiError(
                    400,
                    f"video_url data URL of type {media_type!r}; use one of {sorted(VIDEO_TYPES)}",
                    param="messages",
                )
            return self._write(data, VIDEO_TYPES[media_type], created)
        if url.startswith("file:"):
            return self._local_file(url)
        return self._write(self._download(url), Path(urlparse(url).path).suffix.lower() or ".mp4", created)

    def frames(self, urls: list[str], num_frames: int) -> np.ndarray:
        """Image URLs, in order, as a clip float32 [num_frames, S, S, 3]: only the images the clip keeps
        (picked uniformly) are decoded, each once, and each is shrunk to the model's frame size as soon
        as it is decoded (so memory holds one full-size image at a time)."""
        size = self.service.frame_size
        picked = pick_uniformly(list(range(len(urls))), num_frames)
        decoded: dict[int, np.ndarray] = {}
        for index in dict.fromkeys(picked):
            decoded[index] = resize_shorter_side(self.image(urls[index]), size)
        try:
            return load_clip([decoded[index] for index in picked], num_frames=num_frames, size=size)
        except ValueError as error:
            raise ApiError(400, f"image_url frames: {error}", param="messages") from None

    def image(self, url: str) -> np.ndarray:
        """An image URL as uint8 [H, W, 3] (data URL; file and remote URLs under the media rules)."""
        if url.startswith("data:"):
            media_type, data = self._data_url(url, "image_url")
            if not media_type.startswith("image/"):
                raise ApiError(400, f"image_url data URL of type {media_type!r}", param="messages")
        elif url.startswith("file:"):
            data = self._local_file(url).read_bytes()
        else:
            data = self._download(url)
        side = self.limits.max_side_px
        try:
            with Image.open(io.BytesIO(data)) as image:
                if max(image.size) > side:
                    raise ApiError(
                        400,
                        f"an image is {image.size[0]}x{image.size[1]}; the limit is {side} px a side",
                        param="messages",
                    )
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, Image.DecompressionBombError) as error:
            raise ApiError(400, f"an image_url is not a readable image ({error})", param="messages") from None

    def _data_url(self, url: str, what: str) -> tuple[str, bytes]:
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, f"a {what} data URL must be data:TYPE;base64,DATA", param="messages")
        if len(payload) > math.ceil(self.limits.max_upload_bytes * 4 / 3) + 4:
            raise ApiError(413, f"a {what} is over {self.limits.max_upload_mb:g} MB", param="messages")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"a {what} data URL is not valid base64", param="messages") from None
        return header[len("data:") : -len(";base64")].strip().lower(), data

    def _local_file(self, url: str) -> Path:
        allowed = self.config.allowed_local_media_path
        if allowed is None:
            raise ApiError(400, "file:// media is off on this server (--allowed-local-media-path)", param="messages")
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ApiError(400, "a file:// URL must name a local file", param="messages")
        path = Path(unquote(parsed.path))
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise ApiError(400, f"no such media file: {path.name!r}", param="messages") from None
        if not resolved.is_relative_to(allowed.resolve()) or not resolved.is_file():
            raise ApiError(400, "file:// media must be a file inside the server's allowed folder", param="messages")
        return resolved

    def _download(self, url: str) -> bytes:
        scheme = urlparse(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ApiError(
                400, f"media URLs must be data:, file: or http(s):, got {scheme or url[:16]!r}", param="messages"
            )
        if not self.config.allow_remote_media:
            raise ApiError(400, "remote media is off on this server (--allow-remote-media)", param="messages")
        import httpx

        limit, chunks, size = self.limits.max_upload_bytes, [], 0
        deadline = time.monotonic() + self.config.remote_timeout_s
        try:
            with httpx.stream("GET", url, timeout=self.config.remote_timeout_s, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise ApiError(400, f"fetching the media gave HTTP {response.status_code}", param="messages")
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"remote media over {self.limits.max_upload_mb:g} MB", param="messages")
                    if time.monotonic() > deadline:
                        raise ApiError(400, "fetching the media took too long", param="messages")
                    chunks.append(chunk)
        except httpx.HTTPError as error:
            raise ApiError(400, f"could not fetch the media ({type(error).__name__})", param="messages") from None
        return b"".join(chunks)

    def _write(self, data: bytes, suffix: str, created: list[Path]) -> Path:
        if len(data) > self.limits.max_upload_bytes:
            raise ApiError(413, f"media over {self.limits.max_upload_mb:g} MB", param="messages")
        path = self.folder / f"{uuid.uuid4().hex}{suffix}"
        path.write_bytes(data)
        created.append(path)
        return path


def _number(body: dict, name: str, low: float, high: float, default: float | None) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number in [{low:g}, {high:g}], got {value!r}", param=name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ApiError(400, f"{name} must be an integer {bound}, got {value!r}", param=name)
    return value


def parse_request(body: object, service: ModelService, reader: MediaReader, created: list[Path]) -> ChatRequest:
    """Check a chat-completions body against the API and the server's limits (ApiError otherwise); media
    are read (files written to the private folder are listed in ``created``)."""
    if not isinstance(body, dict):
        raise ApiError(422, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"at most {MAX_MESSAGES} messages", param="messages")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    turns, videos, images = [], [], []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, "each message needs a role: system, developer, user or assistant", param="messages")
        text = _message_text(message.get("content"), videos, images)
        if message["role"] in ("user", "assistant"):
            turns.append({"role": message["role"], "content": text})
    if len(videos) > 1 or (videos and images):
        raise ApiError(
            400, "one video per conversation: one video_url, or image_url frames of one clip", param="messages"
        )
    if len(images) > MAX_IMAGE_FRAMES:
        raise ApiError(400, f"at most {MAX_IMAGE_FRAMES} image_url frames", param="messages")
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")

    limits = service.limits
    num_frames = None
    media = body.get("media_io_kwargs")
    if isinstance(media, dict) and isinstance(media.get("video"), dict) and "num_frames" in media["video"]:
        asked = media["video"]["num_frames"]
        if isinstance(asked, bool) or not isinstance(asked, int):
            raise ApiError(400, "media_io_kwargs.video.num_frames must be an integer", param="media_io_kwargs")
        num_frames = min(max(asked, 1), limits.max_frames)
    settings = _settings(body, service)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if (
        not isinstance(stop, (list, tuple))
        or len(stop) > MAX_STOP_STRINGS
        or not all(isinstance(item, str) and 0 < len(item) <= MAX_STOP_CHARS for item in stop)
    ):
        raise ApiError(
            400,
            f"stop must be a string or at most {MAX_STOP_STRINGS} strings of 1-{MAX_STOP_CHARS} characters",
            param="stop",
        )
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise ApiError(400, "logprobs must be true or false", param="logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, 20)
    if top_logprobs is not None and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    candidates = body.get("candidates")
    if candidates is not None and (not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates)):
        raise ApiError(400, "candidates must be a list of strings", param="candidates")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, "ignore_eos must be true or false", param="ignore_eos")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    if stream and candidates is not None:
        raise ApiError(400, "candidates are answered whole: use stream: false", param="stream")

    video: Path | np.ndarray | None = None
    if videos:
        video = reader.video_file(videos[0], created)
    elif images:
        video = reader.frames(images, service._frames(num_frames))
    if video is None:
        raise ApiError(400, "send a video: one video_url part, or image_url parts as its frames", param="messages")
    chat = service.chat_prompt(turns[:-1], turns[-1]["content"])
    return ChatRequest(
        messages=chat.messages,
        video=video,
        settings=settings,
        num_frames=num_frames,
        stop=tuple(stop),
        stream=stream,
        include_usage=include_usage,
        top_logprobs=(top_logprobs or 0) if logprobs else None,
        candidates=candidates,
        ignore_eos=ignore_eos,
    )


def _message_text(content: object, videos: list[str], images: list[str]) -> str:
    """A message's text; its media URLs appended to ``videos`` / ``images``."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise ApiError(400, "message content must be a string or a list of parts", param="messages")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif (
            kind in ("video_url", "image_url")
            and isinstance(part.get(kind), dict)
            and isinstance(part[kind].get("url"), str)
        ):
            (videos if kind == "video_url" else images).append(part[kind]["url"])
        else:
            raise ApiError(
                400, f"unsupported content part {kind!r}: use text, video_url or image_url", param="messages"
            )
    return "\n".join(texts)


def _settings(body: dict, service: ModelService) -> GenerationSettings:
    """Generation settings of a request (its token budget clamped to the server's limit)."""
    limit = service.limits.max_new_tokens
    asked = _integer(body, "max_completion_tokens", 1)
    asked = asked if asked is not None else _integer(body, "max_tokens", 1)
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", 1e-6, 1.0, 1.0)
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    sampling = temperature > 0
    settings = GenerationSettings(
        do_sample=sampling,
        temperature=temperature if sampling else 1.0,
        top_p=top_p,
        top_k=0,
        seed=None if seed is None else seed % 2**63,
    )
    return service.generation_settings(min(asked or limit, limit), settings)


# ----------------------------------------------------------------------------- the reply


class StopText:
    """Text pieces cut at the first stop string: what may be shown now (holding back a tail that could
    begin a stop string) and whether a stop string was met."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.text, self.shown, self.stopped = stops, "", 0, False
        self._hold = max((len(s) for s in stops), default=1) - 1

    def add(self, piece: str) -> str:
        self.text += piece
        for stop in self.stops:
            at = self.text.find(stop)
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
        end = len(self.text) if self.stopped else max(self.shown, len(self.text) - self._hold)
        out, self.shown = self.text[self.shown : end], end
        return out

    def flush(self) -> str:
        out, self.shown = self.text[self.shown :], len(self.text)
        return out


def _token_logprobs(tokenizer, stream, index: int, token: int) -> dict:
    """OpenAI's log-probability entry of the ``index``-th token handed out (``token``)."""
    logprob, alternatives = stream.logprobs[index]

    def entry(token_id: int, value: float) -> dict:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {**entry(token, logprob), "top_logprobs": [entry(t, v) for t, v in alternatives]}


def _generate(service: ModelService, request: ChatRequest) -> Iterator[tuple[str, dict | None]]:
    """The reply as ``(text piece, log-probability entry or None)``, then ``("", {"finish_reason", "usage"})``.
    Runs in a worker thread (it blocks)."""
    stream = service.chat_tokens(
        request.video, request.messages, request.num_frames, request.settings, request.top_logprobs, request.ignore_eos
    )
    text, cut = IncrementalText(service.model.tokenizer), StopText(request.stop)
    count = 0
    try:
        for index, token in enumerate(stream):
            count += 1
            entry = None
            if request.top_logprobs is not None and index < len(stream.logprobs):
                entry = _token_logprobs(service.model.tokenizer, stream, index, token)
            piece = cut.add(text.add(token))
            if piece or entry:
                yield piece, entry
            if cut.stopped:
                break
        if not cut.stopped:
            rest = cut.add(text.flush()) + cut.flush()
            if rest:
                yield rest, None
    finally:
        stream.cancel()
    length = not cut.stopped and count >= request.settings.max_new_tokens
    usage = {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": count,
        "total_tokens": stream.prompt_tokens + count,
    }
    yield "", {"finish_reason": "length" if length else "stop", "usage": usage}


# ----------------------------------------------------------------------------- the app


class _Admission:
    """At most ``concurrency`` requests processed and ``queue_size`` waiting; beyond that, 429."""

    def __init__(self, concurrency: int, queue_size: int):
        self._running = asyncio.Semaphore(concurrency)
        self._capacity, self._held = concurrency + queue_size, 0

    async def enter(self) -> _Ticket:
        """A request's place (429 when none is free), held until :meth:`_Ticket.release`; waits for a
        processing slot."""
        if self._held >= self._capacity:
            raise ApiError(429, "the server's queue is full; try again later", kind="rate_limit_error")
        self._held += 1
        ticket = _Ticket(self)
        try:
            await self._running.acquire()
        except BaseException:  # the client went away while waiting: its place is free again
            ticket.release()
            raise
        ticket.running = True
        return ticket


class _Ticket:
    """One admitted request; :meth:`release` is idempotent (a stream's end and its background task both call it)."""

    def __init__(self, admission: _Admission):
        self.admission, self.running, self.released = admission, False, False
        self.created: list[Path] = []

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.admission._held -= 1
        if self.running:
            self.admission._running.release()
        _remove(self.created)


def build_openai_app(service: ModelService, config: ServerConfig | None = None, prefix: str = "/v1") -> FastAPI:
    """The FastAPI app of the API (see the module docstring) over ``service``, its routes under ``prefix``
    (``""`` for an app mounted at ``/v1`` inside another, as ``prism-vlm app --openai-api`` does)."""
    config = config or ServerConfig()
    folder = Path(tempfile.mkdtemp(prefix="prism-vlm-serve-"))
    reader = MediaReader(service, config, folder)
    admission = _Admission(service.limits.concurrency, service.limits.queue_size)
    max_body = math.ceil(service.limits.max_upload_bytes * 4 / 3) + (1 << 20)
    app = FastAPI(title="prism-vlm", docs_url=None, redoc_url=None, openapi_url=None)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # media files are removed per request already

    def authorized(request: Request) -> None:
        if not config.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(key.encode(), k.encode()) for k in config.api_keys
        ):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", kind="authentication_error")

    @app.exception_handler(ApiError)
    async def api_error(_request, error: ApiError):
        return error_response(error.status, error.message, error.kind, error.param)

    @app.exception_handler(404)
    async def not_found(_request, _error):
        return error_response(404, "no such route", kind="not_found_error")

    @app.exception_handler(405)
    async def wrong_method(_request, _error):
        return error_response(405, "method not allowed on this route")

    @app.exception_handler(BatcherClosedError)
    async def closed(_request, _error):
        return error_response(503, "the server is shutting down", kind="server_error")

    @app.exception_handler(Exception)
    async def internal(_request, error: Exception):
        logger.exception("request failed", exc_info=error)
        return error_response(500, "internal error", kind="server_error")

    @app.get(f"{prefix}/models")
    async def models(request: Request):
        authorized(request)
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "prism-vlm"}],
        }

    @app.post(f"{prefix}/chat/completions")
    async def chat_completions(request: Request):
        authorized(request)
        body = await _read_json(request, max_body)
        if isinstance(body, dict) and body.get("model") not in (None, config.model_name):
            raise ApiError(
                404,
                f"the model {body.get('model')!r} is not served here; use {config.model_name!r}",
                kind="not_found_error",
                param="model",
            )
        ticket = await admission.enter()
        handed_over = False
        try:
            parsed = await run_in_threadpool(_parse, body, service, reader, ticket.created)
            if parsed.candidates is not None:
                return await run_in_threadpool(_candidates_reply, service, parsed, config.model_name)
            if parsed.stream:
                handed_over = True  # the stream releases the ticket when it ends (or its client leaves)
                return StreamingResponse(
                    _events(service, parsed, config.model_name, ticket),
                    media_type="text/event-stream",
                    background=BackgroundTask(ticket.release),
                )
            return await run_in_threadpool(_whole_reply, service, parsed, config.model_name)
        finally:
            if not handed_over:
                ticket.release()

    return app


def _parse(body, service: ModelService, reader: MediaReader, created: list[Path]) -> ChatRequest:
    """:func:`parse_request`, then the clip checked and decoded (into the service's clip cache), so that a
    bad video is a 400 before any reply starts."""
    try:
        request = parse_request(body, service, reader, created)
        service.load(request.video, request.num_frames)
        return request
    except AppInputError as error:
        raise ApiError(400, str(error), param="messages") from None


def _remove(paths: list[Path] | None) -> None:
    for path in paths or ():
        path.unlink(missing_ok=True)


async def _read_json(request: Request, max_body: int) -> object:
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > max_body:
        raise ApiError(413, f"request body over {max_body} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise ApiError(413, f"request body over {max_body} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(422, "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "JSON nested too deep") from None


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _run(function, *args):
    """``function(*args)``, a user error of the service as a 400."""
    try:
        return function(*args)
    except PrismVlmError as error:  # a bad clip, question or candidates
        raise ApiError(400, str(error)) from None


def _whole_reply(service: ModelService, request: ChatRequest, model_name: str) -> dict:
    def collect():
        pieces, entries, end = [], [], None
        for piece, extra in _generate(service, request):
            if piece:
                pieces.append(piece)
            if extra is not None and "finish_reason" in extra:
                end = extra
            elif extra is not None:
                entries.append(extra)
        return "".join(pieces), entries, end

    text, entries, end = _run(collect)
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": entries} if request.top_logprobs is not None else None,
                "finish_reason": end["finish_reason"],
            }
        ],
        "usage": end["usage"],
    }


def _candidates_reply(service: ModelService, request: ChatRequest, model_name: str) -> dict:
    question = request.messages[-1]["content"]
    result = _run(service.ask, request.video, question, request.candidates, request.num_frames)
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.answer},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "candidates": result.probabilities(),
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


async def _events(service: ModelService, request: ChatRequest, model_name: str, ticket: _Ticket):
    """Server-sent events in OpenAI's chunk format, ending in ``data: [DONE]``."""
    identity, stamp = _completion_id(), int(time.time())

    def chunk(delta: dict, finish: str | None = None, logprobs: dict | None = None, usage: dict | None = None) -> str:
        payload = {
            "id": identity,
            "object": "chat.completion.chunk",
            "created": stamp,
            "model": model_name,
            "choices": []
            if usage is not None
            else [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }
        if usage is not None:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        end = None
        async for piece, extra in iterate_in_threadpool(_generate(service, request)):
            if extra is not None and "finish_reason" in extra:
                end = extra
                continue
            logprobs = {"content": [extra]} if extra is not None else None
            yield chunk({"content": piece}, logprobs=logprobs)
        yield chunk({}, finish=end["finish_reason"])
        if request.include_usage:
            yield chunk({}, usage=end["usage"])
    except (AppInputError, PrismVlmError, ApiError) as error:
        message = error.message if isinstance(error, ApiError) else str(error)
        yield f"data: {json.dumps({'error': {'message': message, 'type': 'invalid_request_error', 'param': None, 'code': 400}})}\n\n"
    except Exception as error:  # noqa: BLE001 -- the client gets an error event, not a traceback
        logger.exception("streamed request failed", exc_info=error)
        yield f"data: {json.dumps({'error': {'message': 'internal error', 'type': 'server_error', 'param': None, 'code': 500}})}\n\n"
    finally:
        ticket.release()
    yield "data: [DONE]\n\n"


def read_api_keys(keys: list[str] | None, key_file: str | os.PathLike | None) -> tuple[str, ...]:
    """API keys from ``--api-key`` flags and an ``--api-key-file`` of one key per line (blank lines and #
    comments skipped)."""
    found = list(keys or ())
    if key_file is not None:
        found += [
            line.strip()
            for line in Path(key_file).read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    return tuple(found)
