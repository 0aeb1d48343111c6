"""``prism-vlm app``: serve the Gradio page on the default model or a saved glue model."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from encoder.common.cli_arguments import FRAMES, NEW_TOKENS, POSITIVE, int_range, positive_float
from encoder.common.errors import UsageError
from vlm.cli.long_video import window_seconds
from vlm.long_video import DEFAULT_WINDOW_S

if TYPE_CHECKING:
    from apps.limits import AppLimits

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_auth(pairs: list[str] | None, auth_file: str | None) -> list[tuple[str, str]]:
    """(user, password) pairs from ``--auth USER:PASS`` flags and an ``--auth-file`` of such lines
    (blank lines and # comments skipped). Raises UsageError (a ValueError) on a malformed entry."""
    entries = [("--auth", entry) for entry in pairs or ()]
    if auth_file is not None:
        lines = Path(auth_file).read_text(encoding="utf-8").splitlines()
        entries += [
            (f"{auth_file}:{number}", line.strip())
            for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    credentials = []
    for where, entry in entries:
        user, colon, password = entry.partition(":")
        if not colon or not user or not password:
            raise UsageError(f"{where}: expected USER:PASSWORD")
        credentials.append((user, password))
    return credentials


def _batch_window_ms(text: str) -> float:
    """An argparse ``type``: a positive number of milliseconds, at most 10 000 (the continuous batcher's 10 s)."""
    value = positive_float(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError(f"must be at most 10000 ms, got {text}")
    return value


def _cmd_app(args: argparse.Namespace) -> int:
    from encoder.common.extras import is_installed, require
    from encoder.videoprism.loading import default_device

    if not is_installed("gradio"):
        require("gradio", "app", "prism-vlm app")  # the install hint, before any model loads
    if args.search_dir is not None and not Path(args.search_dir).is_dir():
        raise FileNotFoundError(f"--search-dir {args.search_dir} is not a folder")
    credentials = read_auth(args.auth, args.auth_file)  # before anything starts
    openai_api = None
    if args.openai_api:
        for module in ("fastapi", "uvicorn"):
            if not is_installed(module):
                require(module, "serve", "prism-vlm app --openai-api")
        openai_api = api_config_from_arguments(args, "app")
    if not credentials and (args.share or args.host not in LOOPBACK_HOSTS):
        exposed = "a public --share link" if args.share else f"--host {args.host}"
        print(
            f"prism-vlm app: warning: {exposed} without --auth: anyone who reaches the address can use the "
            "model and upload files",
            file=sys.stderr,
        )
    # No telemetry or version checks; uploads go to a folder of this server's own, set before Gradio
    # is imported (it reads the variable once, at import, for some of its folders).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from apps.uploads import use_private_upload_dir

    use_private_upload_dir()

    from apps.compute_thread import run_in_passing_thread
    from apps.service import ModelService
    from apps.video_chat import launch_app
    from vlm.model import default_model_dir, load_model

    batching = batching_from_arguments(args)
    limits = limits_from_arguments(
        args, max_windows=args.max_windows or max(1, math.ceil(args.max_duration / args.window))
    )
    device = args.device or default_device()

    def start_models():  # in a thread that ends here, so that one thread runs torch while serving
        service = ModelService(
            load_model(args.model, device=device),
            limits,
            model_dir=args.model or default_model_dir(),
            batching=batching,
        )
        return service, _search_service(args, limits, device, service.run_model_work)

    service, search = run_in_passing_thread(start_models)
    from apps.long_video import LongVideoService
    from vlm.long_video.cache import WindowCache

    long_videos = LongVideoService(
        service,
        search.model if search is not None else None,
        window_s=args.window,
        cache=WindowCache(args.window_cache_dir),
    )
    launch_app(
        service,
        host=args.host,
        port=args.port,
        share=args.share,
        auth=credentials,
        search=search,
        long_videos=long_videos,
        openai_api=openai_api,
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from encoder.common.extras import is_installed, require
    from encoder.videoprism.loading import default_device

    for module in ("fastapi", "uvicorn"):
        if not is_installed(module):
            require(module, "serve", "prism-vlm serve")
    from apps.openai_server import build_openai_app

    config = api_config_from_arguments(args, "serve")  # before anything starts
    import uvicorn

    from apps.compute_thread import run_in_passing_thread
    from apps.service import ModelService
    from vlm.model import default_model_dir, load_model

    limits = limits_from_arguments(args)
    device = args.device or default_device()
    service = run_in_passing_thread(
        lambda: ModelService(
            load_model(args.model, device=device),
            limits,
            model_dir=args.model or default_model_dir(),
            batching=batching_from_arguments(args),
        )
    )
    print(f"prism-vlm serve: http://{args.host}:{args.port}/v1 (model {args.served_model_name!r})", file=sys.stderr)
    uvicorn.run(build_openai_app(service, config), host=args.host, port=args.port, log_level="warning")
    service.close()
    return 0


def _search_service(args: argparse.Namespace, limits, device: str, run_model_work=None):
    """The video-text side: --video-text-model (default: $PRISM_VLM_VIDEO_TEXT_MODEL or the demo's,
    when installed), indexing --search-dir at start; its model work runs through ``run_model_work``
    (None: under a lock of its own). None when no video-text model is available."""
    from apps.search import SearchService
    from vlm.retrieval.video_text_model import (
        MODEL_ENVIRONMENT_VARIABLE,
        default_video_text_model,
        load_video_text_model,
    )

    source = args.video_text_model or default_video_text_model()
    explicit = bool(args.video_text_model or args.search_dir or os.environ.get(MODEL_ENVIRONMENT_VARIABLE))
    if not explicit and not Path(source).exists():
        return None  # no demo video-text model installed: the page works without zero-shot labels and search
    model = load_video_text_model(source, tokenizer=args.video_text_tokenizer, device=device)
    return SearchService.start(
        model, args.search_dir, limits, index_dir=args.search_index, run_model_work=run_model_work
    )


def add_limit_arguments(command: argparse.ArgumentParser) -> None:
    """The per-request limits and the batching flags that ``app`` and ``serve`` share (``AppLimits``)."""
    command.add_argument(
        "--max-upload-mb", type=positive_float, default=200.0, help="largest accepted upload in MB (default 200)"
    )
    command.add_argument(
        "--max-duration", type=positive_float, default=600.0, help="longest accepted clip in seconds (default 600)"
    )
    command.add_argument(
        "--max-side",
        type=POSITIVE,
        default=4096,
        help="largest accepted frame width or height in pixels, checked on every decoded frame (default 4096)",
    )
    command.add_argument(
        "--max-decode-seconds",
        type=positive_float,
        default=60.0,
        help="wall-time budget for decoding one clip (default 60)",
    )
    command.add_argument("--max-frames", type=FRAMES, default=32, help="most frames a request may sample (default 32)")
    command.add_argument(
        "--max-new-tokens", type=NEW_TOKENS, default=256, help="most tokens a request may generate (default 256)"
    )
    command.add_argument("--concurrency", type=POSITIVE, default=16, help="requests processed at once (default 16)")
    command.add_argument(
        "--max-batch",
        type=int_range(1, 1024),
        default=8,
        help="most requests generated together: captions, open answers and chat replies join a running batch "
        "(default 8; 1: one at a time)",
    )
    command.add_argument(
        "--batch-window-ms",
        type=_batch_window_ms,
        default=500.0,
        help="longest a starting batch waits for requests still being decoded (default 500 ms, at most "
        "10000; a lone request never waits)",
    )
    command.add_argument("--queue-size", type=POSITIVE, default=64, help="requests allowed to wait (default 64)")


def add_api_arguments(command: argparse.ArgumentParser) -> None:
    """The OpenAI-compatible API's flags, which ``serve`` and ``app --openai-api`` share."""
    keys = command.add_mutually_exclusive_group()
    keys.add_argument("--api-key", action="append", metavar="KEY", help="accepted API bearer key (repeatable)")
    keys.add_argument("--api-key-file", default=None, help="file of accepted API keys, one per line")
    command.add_argument(
        "--allowed-local-media-path",
        default=None,
        metavar="DIR",
        help="file:// media URLs may name files inside this folder (default: none)",
    )
    command.add_argument(
        "--allow-remote-media",
        action="store_true",
        help="fetch http(s):// media URLs (size- and time-limited; default: refused)",
    )
    command.add_argument(
        "--served-model-name", default="prism-vlm", help="the model name API clients use (default prism-vlm)"
    )


def api_config_from_arguments(args: argparse.Namespace, command: str):
    """The API's :class:`apps.openai_server.ServerConfig` from :func:`add_api_arguments`'s flags (checked
    before any model loads; a warning when it listens beyond this machine without a key)."""
    from apps.openai_server import ServerConfig, read_api_keys

    keys = read_api_keys(args.api_key, args.api_key_file)
    if args.api_key_file is not None and not keys:
        raise UsageError(f"--api-key-file {args.api_key_file} holds no key")
    media = args.allowed_local_media_path
    if media is not None and not Path(media).is_dir():
        raise FileNotFoundError(f"--allowed-local-media-path {media} is not a folder")
    if not keys and args.host not in LOOPBACK_HOSTS:
        print(
            f"prism-vlm {command}: warning: the API on --host {args.host} without --api-key: anyone who reaches "
            "the address can use the model",
            file=sys.stderr,
        )
    return ServerConfig(
        model_name=args.served_model_name,
        api_keys=keys,
        allowed_local_media_path=None if media is None else Path(media).resolve(),
        allow_remote_media=args.allow_remote_media,
    )


def limits_from_arguments(args: argparse.Namespace, **more) -> AppLimits:
    """:class:`AppLimits` from :func:`add_limit_arguments`'s flags (``more``: other fields)."""
    from apps.limits import AppLimits

    return AppLimits(
        max_upload_mb=args.max_upload_mb,
        max_duration_s=args.max_duration,
        max_side_px=args.max_side,
        max_decode_s=args.max_decode_seconds,
        max_frames=args.max_frames,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
        **more,
    )


def batching_from_arguments(args: argparse.Namespace):
    """The continuous batcher's config from ``--max-batch`` and ``--batch-window-ms``."""
    from vlm.serving.continuous_batching import ContinuousBatchingConfig

    return ContinuousBatchingConfig(window_s=args.batch_window_ms / 1000, max_batch=args.max_batch)


def add_subcommand(subparsers) -> None:
    """Register ``app`` and ``serve``."""
    app = subparsers.add_parser(
        "app", help="start the Gradio app: describe, chat about and ask questions on an uploaded clip"
    )
    app.add_argument("--model", default=None, help="saved glue model directory (default: the installed demo model)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs the internet)")
    app.add_argument(
        "--auth",
        action="append",
        metavar="USER:PASS",
        help="require this login for the page and the API (repeatable); without it the app is open to "
        "whoever reaches its address",
    )
    app.add_argument("--auth-file", default=None, help="file of USER:PASS lines, one login per line")
    app.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_limit_arguments(app)
    app.add_argument(
        "--search-dir",
        default=None,
        help="folder of clips for the Search tab, indexed at start (a restart embeds only new clips)",
    )
    app.add_argument(
        "--search-index",
        default=None,
        help="where the --search-dir index is kept (default: ~/.cache/prism-vlm/search-index/HASH)",
    )
    app.add_argument(
        "--video-text-model",
        default=None,
        help="video-text model for search and zero-shot labels: LvT .npz, transformers directory or "
        "Hub id (default: $PRISM_VLM_VIDEO_TEXT_MODEL, else the demo's)",
    )
    app.add_argument("--video-text-tokenizer", default=None, help="its SentencePiece .model (needed for an .npz)")
    app.add_argument(
        "--window",
        type=window_seconds,
        default=DEFAULT_WINDOW_S,
        metavar="SECONDS",
        help=f"a video longer than one window of this many seconds (default {DEFAULT_WINDOW_S:g}) is read window "
        "by window: its timeline, moments found by text, chat replies with times",
    )
    app.add_argument(
        "--max-windows",
        type=POSITIVE,
        default=None,
        help="most windows of a long video one request may read (default: --max-duration / --window)",
    )
    app.add_argument(
        "--window-cache-dir",
        default=None,
        help="where long videos' windows are cached (default: $PRISM_VLM_CACHE or ~/.cache/prism-vlm/windows)",
    )
    app.add_argument(
        "--openai-api",
        action="store_true",
        help="also serve the OpenAI-compatible API (prism-vlm serve's) at /v1 in this process, on the same "
        "model (its own keys: --api-key; docs/serving.md)",
    )
    add_api_arguments(app)
    app.set_defaults(func=_cmd_app)

    serve = subparsers.add_parser(
        "serve", help="serve an OpenAI-compatible chat-completions API (video_url / image_url parts) on the glue"
    )
    serve.add_argument("--model", default=None, help="saved glue model directory (default: the installed demo model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int_range(1, 65535), default=8000, help="port (default 8000)")
    add_api_arguments(serve)
    serve.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_limit_arguments(serve)
    serve.set_defaults(func=_cmd_serve)
