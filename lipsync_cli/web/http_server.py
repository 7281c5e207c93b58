"""The HTTP side of `lipsync serve`: model videos, the model list, an OpenAI token endpoint, the page.

Paths are those of the original system. `/api/model-video/{name}` streams a model video with real
Range requests (a browser `<video>` seeks with them), ETag and Last-Modified; names come from the
network, so they go through `find_named_model`, which never leaves the model folders, and refused
names are logged. `POST /api/token` (and `/token`) mints a short-lived OpenAI Realtime client
secret with the server's key and returns only the secret and its expiry (see `web.token`, which
also rate-limits it per client).

`/api/model-video/{name}/browser.mp4` is the same video as H.264 for a model in a codec browsers
cannot decode (see `web.browser_video`; made once, on the first request); `/api/models` gives each
model's `browser_url`, the URL a page should download. `/api/config` tells the page what it needs
besides the models (the Realtime calls endpoint). With a generator, `/ws/lipsync` is the WebSocket
bridge into the live engine (see `web.bridge`).

`create_app(store, options, generator=..., slots=...)` builds the app over the process's one
ModelStore (the gRPC service shares it); `create_server(store, options, host=..., port=...)` runs it
under uvicorn in a background thread and returns the bound port, so tests start real servers on port 0.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from lipsync_cli.core.generator import MouthGenerator
from lipsync_cli.errors import ModelNotFoundError, OutputError, ServiceError, VideoError
from lipsync_cli.media.models import find_named_model, is_valid_name, served_models
from lipsync_cli.media.store import ModelStore
from lipsync_cli.media.video import probe_video
from lipsync_cli.web.bridge import BRIDGE_PATH, StreamSlots, add_bridge
from lipsync_cli.web.browser_video import ensure_browser_copy, needs_browser_copy
from lipsync_cli.web.options import HttpOptions
from lipsync_cli.web.ops import add_ops_routes
from lipsync_cli.web.responses import describe_peer, json_error
from lipsync_cli.web.token import TokenEndpoint

LOG = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOGGED_NAME_CHARS = 200  # a refused name is logged this far: enough to see the attempt, no log flood
# read size when streaming a video: every read is a hop to a worker thread; with Starlette's 64 KiB
# a 1 MB range costs 16 of them, and bench/http_bench.py served about 1.4x fewer requests/s
VIDEO_CHUNK_BYTES = 256 * 1024
STARTUP_TIMEOUT_S = 10.0
# a <video> keeps its connection open; Ctrl-C should not wait for the viewer to leave
SHUTDOWN_GRACE_S = 2
CLOSE_POLICY_VIOLATION = 1008  # RFC 6455; before the handshake completes the client sees HTTP 403
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo"}


class _AnyTextConvertor(Convertor[str]):
    """Like `path`, but also across newlines, so that no refused name slips past the model route."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyTextConvertor())


class _VideoResponse(FileResponse):
    chunk_size = VIDEO_CHUNK_BYTES

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # RFC 9110 section 14.2: a Range in a unit the server does not know is ignored (200, the whole
        # file); Starlette would answer 400. An empty list is how Starlette says "no range".
        unit, _, specs = http_range.partition("=")
        if unit.strip().lower() != "bytes":
            return []
        # ...and of several ranges, those starting past the end are left out: 416 only when none is
        # satisfiable (Starlette refuses the whole request for one bad range)
        satisfiable = [spec for spec in specs.split(",") if _satisfiable(spec, file_size)]
        if satisfiable and len(satisfiable) < len(specs.split(",")):
            http_range = "bytes=" + ",".join(satisfiable)
        return super()._parse_range_header(http_range, file_size)


def _satisfiable(spec: str, file_size: int) -> bool:
    """Whether one range spec ("a-b", "a-", "-n") selects any byte of a file_size-byte file; a
    malformed spec counts as satisfiable (Starlette then answers 400 for it, as before)."""
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return True
    if not first.strip():
        return last.strip() != "0"
    return not first.strip().isdigit() or int(first) < file_size


def _describe(name: str, video: Path, store: ModelStore) -> dict:
    url = f"/api/model-video/{quote(name)}"
    entry: dict = {"name": name, "url": url, "size_bytes": video.stat().st_size}
    try:
        info = probe_video(video)
        copy = needs_browser_copy(video, info)
    except VideoError:
        # the path is in the exception's message; a remote caller gets no server paths
        entry.update(error="not a readable video file", duration_s=None, fps=None, width=None, height=None,
                     browser_url=None)
    else:
        entry.update(duration_s=round(info.duration_s, 3), fps=round(float(info.fps), 3),
                     width=info.width, height=info.height, browser_url=f"{url}/browser.mp4" if copy else url)
    entry["prepared"] = store.is_prepared(video)
    return entry


def create_app(store: ModelStore, options: HttpOptions, *, generator: MouthGenerator | None = None,
               slots: StreamSlots | None = None) -> FastAPI:
    """The FastAPI app of `lipsync serve` (routes in the module docstring, static page at `/`).

    `store` is shared, not copied: its `models_dir` is where model names are looked up and its
    cache folder says which models are prepared. With a `generator`, the WebSocket bridge is
    served at BRIDGE_PATH; its streams take one of `slots` each (the capacity gRPC streams share:
    anything with non-blocking `acquire(blocking=False) -> bool` and `release()`; None: no limit).
    """
    token = TokenEndpoint(options)
    static = StaticFiles(directory=STATIC_DIR, html=True)
    # the interactive docs pull their scripts from a CDN; /openapi.json stays
    app = FastAPI(title="lipsync", docs_url=None, redoc_url=None)

    def lookup(name: str, request: Request) -> Path | Response:
        """The model video named `name`, or the error response to send."""
        if not is_valid_name(name):
            LOG.warning("refused model name %s from %s", ascii(name[:LOGGED_NAME_CHARS]),
                        describe_peer(request.scope))
            return json_error(400, "a model name is letters, digits, '_', '.' and '-' only")
        try:
            # not store.resolve: names the gRPC LoadModel registered may point anywhere on disk
            return find_named_model(name, models_dir=store.models_dir)
        except ModelNotFoundError:
            # not the exception's message: it lists the server's folders
            return json_error(404, f"no model named {name!r}")

    def send_file(path: Path, request: Request) -> Response:
        media_type = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        # no-cache: a browser revalidates with the ETag, so a replaced video shows up at once
        response = _VideoResponse(path, media_type=media_type, stat_result=path.stat(),
                                  headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
        if static.is_not_modified(response.headers, request.headers):
            kept = {k: response.headers[k] for k in ("etag", "last-modified", "cache-control")}
            return Response(status_code=304, headers=kept)
        return response

    # ahead of the route below, whose `any_text` would take "NAME/browser.mp4" for a (refused) name
    @app.api_route("/api/model-video/{name}/browser.mp4", methods=["GET", "HEAD"])
    async def browser_video(name: str, request: Request) -> Response:
        video = lookup(name, request)
        if isinstance(video, Response):
            return video
        try:
            # the first request transcodes (seconds): off the event loop
            if await anyio.to_thread.run_sync(needs_browser_copy, video):
                video = await anyio.to_thread.run_sync(ensure_browser_copy, video, store.cache_dir)
        except VideoError:
            return json_error(422, f"model {name!r} cannot be decoded, so it has no browser copy")
        except OutputError as exc:
            LOG.error("cannot write the browser copy of %s: %s", name, exc)
            return json_error(500, f"the server cannot write a browser copy of model {name!r}")
        return send_file(video, request)

    # `any_text` so that names with slashes or newlines (`../x`, `%2e%2e%2f`, `%0a`) reach this route
    # and are refused and logged here, instead of falling through to a silent 404
    @app.api_route("/api/model-video/{name:any_text}", methods=["GET", "HEAD"])
    async def model_video(name: str, request: Request) -> Response:
        # async on purpose: the lookup is a few stat() calls, cheaper than a hop to the thread pool
        video = lookup(name, request)
        return video if isinstance(video, Response) else send_file(video, request)

    @app.get("/api/models")
    def models() -> list[dict]:
        return [_describe(n, v, store) for n, v in served_models(models_dir=store.models_dir).items()]

    @app.get("/api/config")
    def config() -> dict:
        # what the page needs besides the model list; never a key
        return {"realtime_calls_url": options.realtime_calls_url, "bridge_path": BRIDGE_PATH if generator else None}

    @app.get("/healthz")
    def healthz() -> dict:
        # liveness only: a probe every few seconds should not scan the model folders
        return {"ok": True}

    # ours and the original system's path, with one rate limit between them
    for path in ("/api/token", "/token"):
        app.add_api_route(path, token.mint, methods=["POST"])

    if generator is not None:
        add_bridge(app, store, generator, slots=slots)  # inserts its route ahead of the mount below
    if slots is not None:  # /readyz and /metrics read the stream capacity
        add_ops_routes(app, store=store, capacity=slots)
    app.mount("/", static, name="static")
    if options.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.allowed_origins),
                           allow_methods=["GET", "HEAD", "POST"],
                           allow_headers=["Authorization", "X-Lipsync-Secret", "Range", "Content-Type"],
                           expose_headers=["Content-Range", "Content-Length", "Accept-Ranges", "ETag"])
    return app


def is_loopback(host: str) -> bool:
    """True when `host` (a bind address or a name) only reaches this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _names_this_machine(host_header: str) -> bool:
    host = urlsplit(f"//{host_header}").hostname or ""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


class LoopbackHostGuard:
    """Refuse requests and WebSockets whose Host header is a DNS name other than localhost.

    A server on loopback is for this machine only. A web page whose DNS name its owner re-points at
    127.0.0.1 (DNS rebinding) would otherwise be same-origin with it and could read a minted client
    secret or open lip-sync streams; IP literals and `localhost` cannot be re-pointed that way.
    A refused WebSocket handshake is answered 403 (ASGI's `websocket.close` before accepting).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "")
            if host and not _names_this_machine(host):
                LOG.warning("refused Host %s from %s", ascii(host[:LOGGED_NAME_CHARS]), describe_peer(scope))
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION})
                    return
                response = json_error(400, "this server listens on loopback only: use http://127.0.0.1 or "
                                       "http://localhost, or start it with --host to serve other names")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HttpServer:
    """A uvicorn server running in a background thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread):
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop accepting, give open responses SHUTDOWN_GRACE_S to finish, and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(SHUTDOWN_GRACE_S + STARTUP_TIMEOUT_S)


def _listen_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ServiceError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    return sock


def create_server(store: ModelStore, options: HttpOptions, *, host: str = "127.0.0.1", port: int = 0,
                  generator: MouthGenerator | None = None, slots: StreamSlots | None = None) -> tuple[HttpServer, int]:
    """Start the HTTP app over `store` on host:port (0: a free port) in a background thread.

    `generator` and `slots` go to `create_app` (the WebSocket bridge). Returns the running server
    (call `.stop()`) and the bound port. A server on loopback accepts only Host headers naming this
    machine (see LoopbackHostGuard).
    """
    app: ASGIApp = create_app(store, options, generator=generator, slots=slots)
    if is_loopback(host):
        app = LoopbackHostGuard(app)
    # binding here, not in uvicorn, makes a busy port an error of this call and tells us port 0's pick
    sock = _listen_socket(host, port)
    bound_port = sock.getsockname()[1]
    # log_config None: logging is the caller's to configure (the CLI does). proxy_headers off: by
    # default uvicorn believes X-Forwarded-For from 127.0.0.1, which would let any local caller pick
    # the client address the token rate limit counts by. No WebSocket compression: the bridge sends
    # JPEG, which deflate cannot shrink, and compressing it cost more CPU than making the mouth's JPEG
    config = uvicorn.Config(app, log_config=None, lifespan="off", server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S, ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lipsync-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ServiceError(f"the HTTP server on {host}:{bound_port} did not start (see the log)")
        time.sleep(0.01)
    return HttpServer(server, thread), bound_port
