"""The HTTP side of `lipsync serve`: model videos, the model list, an OpenAI token endpoint, the page.

Paths are those of the original system. `/api/model-video/{name}` streams a model video with real
Range requests (a browser `<video>` seeks with them), ETag and Last-Modified; names come from the
network, so they go through `find_named_model`, which never leaves the model folders, and refused
names are logged. `POST /api/token` (and `/token`) mints a short-lived OpenAI Realtime client
secret with the server's key and returns only the secret and its expiry.

`create_app(settings)` builds the app; `create_server(settings, host=..., port=...)` runs it under
uvicorn in a background thread and returns the bound port, so tests start real servers on port 0.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import openai
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from lipsync_cli.defaults import DEFAULT_REALTIME_MODEL
from lipsync_cli.errors import LipsyncError, ModelNotFoundError, ServiceError, VideoError
from lipsync_cli.media.models import find_named_model, is_valid_name, served_models
from lipsync_cli.media.store import DEFAULT_MODEL_LIMIT, ModelStore
from lipsync_cli.media.video import probe_video

LOG = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_TOKEN_TTL_S = 600
# the range OpenAI accepts for `expires_after.seconds`
MIN_TOKEN_TTL_S = 10
MAX_TOKEN_TTL_S = 7200
OPENAI_TIMEOUT_S = 15.0
OPENAI_MAX_RETRIES = 1  # a page asks again anyway; more retries only keep it waiting
SECRET_HEADER = "x-lipsync-secret"
LOGGED_NAME_CHARS = 200  # a refused name is logged this far: enough to see the attempt, no log flood
# read size when streaming a video: every read is a hop to a worker thread; with Starlette's 64 KiB
# a 1 MB range costs 16 of them, and bench/http_bench.py served about 1.4x fewer requests/s
VIDEO_CHUNK_BYTES = 256 * 1024
STARTUP_TIMEOUT_S = 10.0
# a <video> keeps its connection open; Ctrl-C should not wait for the viewer to leave
SHUTDOWN_GRACE_S = 2
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo"}
_ORIGIN_RE = re.compile(r"^https?://[^/\s]+$")


class _AnyTextConvertor(Convertor[str]):
    """Like `path`, but also across newlines, so that no refused name slips past the model route."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyTextConvertor())


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass(frozen=True)
class ServeSettings:
    """What `lipsync serve` serves and how it guards the token endpoint."""

    # searched for model names before the original system's folders; None: only those
    models_dir: Path | None = None
    # where model caches live (for "prepared" in /api/models); None: the default cache folder
    cache_dir: Path | None = None
    # origins allowed to call the API from other sites' pages ("https://app.example"); empty: no CORS
    allowed_origins: tuple[str, ...] = ()
    # callers of the token endpoint must present it; None: anyone who can reach the server may ask
    token_secret: str | None = field(default_factory=lambda: _env("LIPSYNC_TOKEN_SECRET"), repr=False)
    # the key client secrets are minted with; None: the token endpoint answers 503
    openai_api_key: str | None = field(default_factory=lambda: _env("OPENAI_API_KEY"), repr=False)
    # the Realtime model the minted session is for
    realtime_model: str = DEFAULT_REALTIME_MODEL
    # how long a minted client secret stays valid
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    # models the gRPC service keeps loaded at once (least recently used ones are dropped)
    max_models: int = DEFAULT_MODEL_LIMIT

    def __post_init__(self) -> None:
        for origin in self.allowed_origins:
            if origin != "*" and not _ORIGIN_RE.match(origin):
                raise LipsyncError(f"allowed origin {origin!r} must look like https://host[:port], "
                                   "with no path and no trailing slash")
        if not MIN_TOKEN_TTL_S <= self.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise LipsyncError(f"the token lifetime must be {MIN_TOKEN_TTL_S} to {MAX_TOKEN_TTL_S} s, "
                               f"not {self.token_ttl_s}")
        if self.token_secret is not None and not self.token_secret.strip():
            raise LipsyncError("the token secret must not be blank")


class _VideoResponse(FileResponse):
    chunk_size = VIDEO_CHUNK_BYTES


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown client"


def _presented_secret(headers: Headers) -> bytes:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    presented = value.strip() if scheme.lower() == "bearer" else headers.get(SECRET_HEADER, "")
    # header values arrive decoded as latin-1; back to the bytes the caller sent
    return presented.encode("latin-1", errors="replace")


def _describe(name: str, video: Path, store: ModelStore) -> dict:
    entry: dict = {"name": name, "url": f"/api/model-video/{quote(name)}", "size_bytes": video.stat().st_size}
    try:
        info = probe_video(video)
    except VideoError:
        # the path is in the exception's message; a remote caller gets no server paths
        entry.update(error="not a readable video file", duration_s=None, fps=None, width=None, height=None)
    else:
        entry.update(duration_s=round(info.duration_s, 3), fps=round(float(info.fps), 3),
                     width=info.width, height=info.height)
    entry["prepared"] = store.is_prepared(video)
    return entry


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app of `lipsync serve` (routes in the module docstring, static page at `/`)."""
    store = ModelStore(cache_dir=settings.cache_dir, models_dir=settings.models_dir)
    openai_client = None
    if settings.openai_api_key:
        # base_url None: the SDK takes OPENAI_BASE_URL, else the real API
        openai_client = openai.OpenAI(api_key=settings.openai_api_key, timeout=OPENAI_TIMEOUT_S,
                                      max_retries=OPENAI_MAX_RETRIES)
    static = StaticFiles(directory=STATIC_DIR, html=True)
    # the interactive docs pull their scripts from a CDN; /openapi.json stays
    app = FastAPI(title="lipsync", docs_url=None, redoc_url=None)

    # `any_text` so that names with slashes or newlines (`../x`, `%2e%2e%2f`, `%0a`) reach this route
    # and are refused and logged here, instead of falling through to a silent 404
    @app.api_route("/api/model-video/{name:any_text}", methods=["GET", "HEAD"])
    async def model_video(name: str, request: Request) -> Response:
        # async on purpose: the lookup is a few stat() calls, cheaper than a hop to the thread pool
        if not is_valid_name(name):
            LOG.warning("refused model name %s from %s", ascii(name[:LOGGED_NAME_CHARS]), _client(request.scope))
            return _error(400, "a model name is letters, digits, '_', '.' and '-' only")
        try:
            video = find_named_model(name, models_dir=settings.models_dir)
        except ModelNotFoundError:
            # not the exception's message: it lists the server's folders
            return _error(404, f"no model named {name!r}")
        media_type = MEDIA_TYPES.get(video.suffix.lower(), "application/octet-stream")
        # no-cache: a browser revalidates with the ETag, so a replaced video shows up at once
        response = _VideoResponse(video, media_type=media_type, stat_result=video.stat(),
                                headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
        if static.is_not_modified(response.headers, request.headers):
            kept = {k: response.headers[k] for k in ("etag", "last-modified", "cache-control")}
            return Response(status_code=304, headers=kept)
        return response

    @app.get("/api/models")
    def models() -> list[dict]:
        return [_describe(n, v, store) for n, v in served_models(models_dir=settings.models_dir).items()]

    @app.get("/healthz")
    def healthz() -> dict:
        # liveness only: a probe every few seconds should not scan the model folders
        return {"ok": True}

    @app.post("/api/token")
    @app.post("/token")  # the original system's path
    def token(request: Request) -> JSONResponse:
        if settings.token_secret is not None and not hmac.compare_digest(
                _presented_secret(request.headers), settings.token_secret.encode()):
            LOG.warning("refused a token request from %s: missing or wrong shared secret", _client(request.scope))
            return _error(401, "this server needs its shared secret: send 'Authorization: Bearer SECRET' "
                               "or 'X-Lipsync-Secret: SECRET'", headers={"WWW-Authenticate": "Bearer"})
        if openai_client is None:
            return _error(503, "no OpenAI API key on the server: set OPENAI_API_KEY where `lipsync serve` runs")
        try:
            secret = openai_client.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": settings.token_ttl_s},
                session={"type": "realtime", "model": settings.realtime_model})
        except openai.APIStatusError as exc:
            # only the status: OpenAI's error text can quote part of the key
            LOG.warning("OpenAI refused to mint a client secret (HTTP %d)", exc.status_code)
            return _error(502, f"OpenAI refused to create a client secret (HTTP {exc.status_code})")
        except openai.APIError as exc:
            LOG.warning("cannot mint a client secret: %s", type(exc).__name__)
            return _error(502, "cannot reach the OpenAI API to create a client secret")
        return JSONResponse({"value": secret.value, "expires_at": secret.expires_at},
                            headers={"Cache-Control": "no-store"})

    app.mount("/", static, name="static")
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins),
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
    """Refuse requests whose Host header is a DNS name other than localhost.

    A server on loopback is for this machine only. A web page whose DNS name its owner re-points at
    127.0.0.1 (DNS rebinding) would otherwise be same-origin with it and could read a minted client
    secret; IP literals and `localhost` cannot be re-pointed that way.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if host and not _names_this_machine(host):
                LOG.warning("refused Host %s from %s", ascii(host[:LOGGED_NAME_CHARS]), _client(scope))
                response = _error(400, "this server listens on loopback only: use http://127.0.0.1 or "
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


def create_server(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 0) -> tuple[HttpServer, int]:
    """Start the HTTP app on host:port (0: a free port) in a background thread.

    Returns the running server (call `.stop()`) and the bound port. A server on loopback accepts
    only Host headers naming this machine (see LoopbackHostGuard).
    """
    app: ASGIApp = create_app(settings)
    if is_loopback(host):
        app = LoopbackHostGuard(app)
    # binding here, not in uvicorn, makes a busy port an error of this call and tells us port 0's pick
    sock = _listen_socket(host, port)
    bound_port = sock.getsockname()[1]
    # log_config None: logging is the caller's to configure (the CLI does)
    config = uvicorn.Config(app, log_config=None, lifespan="off", server_header=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
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
