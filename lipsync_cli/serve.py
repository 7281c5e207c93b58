"""`lipsync serve`: the HTTP server and the gRPC LipSync service in one process, until interrupted.

`ServeSettings` says what to serve; `run_serve` builds the process's one ModelStore (and one
mouth generator) and hands it to both servers, so a model loaded for a gRPC call is the one the
HTTP side reports on, and `--max-models` bounds the memory of the whole process.

Shutdown: SIGTERM (Kubernetes, `docker stop`, systemd) or `stop` drains: the stream capacity takes
no new stream (new calls get UNAVAILABLE "draining", `/readyz` says 503 and gRPC health
NOT_SERVING, so balancers and clients with a list go to other replicas), the gRPC server stops
listening (its GOAWAY moves the clients' channels elsewhere), the running streams get `drain_s` to
finish, those still running then are stopped with UNAVAILABLE (clients resume them on another
replica), and `run_serve` returns (exit 0). `/healthz` and `/metrics` answer until the end.
Ctrl-C stops at once (GRPC_GRACE_S).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from lipsync_cli.core.generators import make_generator
from lipsync_cli.defaults import DEFAULT_DRAIN_S, DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT
from lipsync_cli.errors import LipsyncError
from lipsync_cli.media.store import DEFAULT_MODEL_LIMIT, ModelStore
from lipsync_cli.rpc.capacity import Capacity
from lipsync_cli.rpc.legacy_service import add_legacy_service
from lipsync_cli.rpc.service import create_server as create_grpc_server
from lipsync_cli.web.http_server import create_server, is_loopback
from lipsync_cli.web.options import HttpOptions

LOG = logging.getLogger(__name__)

GRPC_GRACE_S = 2.0  # open streams get this long to finish on Ctrl-C
# after the drain deadline: streams stop at their next frame (a live one within its next chunk,
# 20-100 ms); this is how long they get to say so before gRPC cancels what is left
STOP_STREAMS_S = 2.0

# {"http": "http://127.0.0.1:3000/", "grpc": "127.0.0.1:50051"}, with the ports really bound
ReadyFn = Callable[[dict[str, str]], None]


@dataclass(frozen=True)
class ServeSettings:
    """What `lipsync serve` serves; validated here, once."""

    # searched for model names before the original system's folders; None: only those
    models_dir: Path | None = None
    # where model caches live; None: the default cache folder
    cache_dir: Path | None = None
    # models kept loaded at once by the one store both servers share (least recently used dropped)
    max_models: int = DEFAULT_MODEL_LIMIT
    # CORS and the token endpoint's guards (its defaults read OPENAI_API_KEY, LIPSYNC_TOKEN_SECRET)
    http: HttpOptions = field(default_factory=HttpOptions)
    # streams and clips served at once by both gRPC APIs; None: `rpc.limits.default_max_streams()`
    max_streams: int | None = None
    # SIGTERM: seconds the running streams get to finish before they are stopped (clients resume elsewhere)
    drain_s: float = DEFAULT_DRAIN_S

    def __post_init__(self) -> None:
        if self.max_models < 1:
            raise LipsyncError(f"at least one model must stay loaded, not {self.max_models}")
        if self.max_streams is not None and self.max_streams < 1:
            raise LipsyncError(f"the service must take at least one stream, not {self.max_streams}")
        if not 0 <= self.drain_s < float("inf"):
            raise LipsyncError(f"the drain time must be 0 or more seconds, not {self.drain_s}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """Treat SIGTERM (systemd, docker stop) like Ctrl-C while serving; signals need the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drain(capacity: Capacity, grpc_server, drain_s: float) -> None:
    """Take no new stream, let the running ones finish within drain_s, stop the rest; stops the gRPC server."""
    in_use, _ = capacity.state()
    LOG.info("draining: %d streams running, %g s to finish; new calls go to other replicas", in_use, drain_s)
    capacity.drain()  # readiness 503, health NOT_SERVING, new calls UNAVAILABLE from here on
    # stops listening and sends GOAWAY, so clients' channels pick other replicas; running calls go on
    stopped = grpc_server.stop(drain_s + STOP_STREAMS_S)
    if not capacity.wait_idle(drain_s):
        LOG.warning("drain deadline: stopping %d streams still running (their clients resume elsewhere)",
                    capacity.state().in_use)
        capacity.stop_streams()
        capacity.wait_idle(STOP_STREAMS_S)
    stopped.wait()
    LOG.info("drained")


def run_serve(settings: ServeSettings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_HTTP_PORT,
              grpc_port: int = DEFAULT_GRPC_PORT, on_ready: ReadyFn | None = None,
              stop: threading.Event | None = None) -> None:
    """Serve HTTP on host:port and the gRPC service on host:grpc_port until Ctrl-C, SIGTERM or `stop`.

    SIGTERM and `stop` drain first (module docstring); Ctrl-C does not. Port 0 picks a free port. `on_ready(urls)` is called once both listen, with the bound
    addresses. Both servers are stopped before this returns; Ctrl-C is a normal way out, not an
    error. Raises ServiceError when a port cannot be bound.
    """
    stop = stop or threading.Event()
    if not is_loopback(host) and settings.http.openai_api_key and settings.http.token_secret is None:
        LOG.warning("serving on %s with no token secret: anyone who can reach it can mint OpenAI client "
                    "secrets on this server's key; set --token-secret or LIPSYNC_TOKEN_SECRET", host)
    # the process's one store: the gRPC services load models into it, the HTTP side reads from it
    store = ModelStore(cache_dir=settings.cache_dir, models_dir=settings.models_dir, limit=settings.max_models)
    # one generator behind both APIs: ours and the original system's, on the same port
    generator = make_generator()
    # one limit of streams for both APIs (its state() is what a readiness check reads)
    capacity = Capacity(settings.max_streams)
    LOG.info("serving at most %d streams at once", capacity.limit)
    grpc_server, bound_grpc_port = create_grpc_server(
        _host_port(host, grpc_port), store=store, generator=generator, capacity=capacity,
        extra_servicers=[add_legacy_service(store, generator, capacity)])
    try:
        # slots: /readyz reads the capacity, and the page's WebSocket streams count against it too
        http_server, bound_http_port = create_server(store, settings.http, host=host, port=port,
                                                     generator=generator, slots=capacity)
        try:
            if on_ready is not None:
                on_ready({"http": f"http://{_host_port(host, bound_http_port)}/",
                          "grpc": _host_port(host, bound_grpc_port)})
            with _stop_on_sigterm(stop):
                stop.wait()
                _drain(capacity, grpc_server, settings.drain_s)
        except KeyboardInterrupt:
            pass
        finally:
            http_server.stop()
    finally:
        grpc_server.stop(GRPC_GRACE_S).wait()  # at once when drained
