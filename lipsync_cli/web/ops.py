"""What operators and orchestrators read from `lipsync serve`'s HTTP port: readiness and metrics.

`add_ops_routes(app, store=..., capacity=..., draining=...)` adds, ahead of the static mount:

- `GET /readyz`: 200 `{"ready": true, ...}` while the server should get new work: model videos are
  found, a stream slot is free and it is not draining; else 503 `{"ready": false, "error": REASON,
  ...}`. Both carry `streams` (in use), `limit` and `draining`. A Kubernetes readiness probe (see
  `deploy/k8s/`) takes a 503 replica out of the Service; liveness stays `/healthz` (always 200
  while the process runs), so a full or draining replica is never restarted for being busy.
- `GET /metrics`: the Prometheus text format of `lipsync_cli.metrics` plus this server's state:
  lipsync_models_loaded, lipsync_model_memory_bytes, lipsync_model_limit (from `store.stats()`),
  lipsync_stream_limit, lipsync_draining and lipsync_ready. Read at scrape time; nothing is
  counted per request.

The web layer does not import the rpc layer: `capacity` is anything with `state() -> (in_use,
limit)` (`rpc.capacity.Capacity`; its `draining` attribute is read when `draining` is not given).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lipsync_cli.media.models import served_models
from lipsync_cli.media.store import ModelStore
from lipsync_cli.metrics import EXPOSITION_CONTENT_TYPE, exposition

READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
# a probe every few seconds should not list the model folders each time: the answer is kept this long
MODELS_FOUND_TTL_S = 10.0


class CapacityView(Protocol):
    """The stream capacity, as readiness reads it (`rpc.capacity.Capacity`)."""

    def state(self) -> tuple[int, int]: ...


class Readiness(NamedTuple):
    """One readiness verdict; reason is "" when ready."""

    ready: bool
    reason: str
    streams: int  # in use now
    limit: int  # the most at once (0: no capacity given)
    draining: bool


class _ModelsFound:
    """Whether any model video is served, re-listed at most every MODELS_FOUND_TTL_S."""

    def __init__(self, store: ModelStore):
        self._store, self._lock = store, threading.Lock()
        self._found, self._checked_at = False, -MODELS_FOUND_TTL_S

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= MODELS_FOUND_TTL_S:
                self._found = bool(served_models(models_dir=self._store.models_dir))
                self._checked_at = now
            return self._found


def _draining_of(capacity: CapacityView | None, draining: Callable[[], bool] | None) -> Callable[[], bool]:
    if draining is not None:
        return draining
    return lambda: bool(getattr(capacity, "draining", False))


class _ServerCollector(Collector):
    """This server's state as gauges, read at each scrape."""

    def __init__(self, store: ModelStore, readiness: Callable[[], Readiness]):
        self._store, self._readiness = store, readiness

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._store.stats()
        verdict = self._readiness()
        yield GaugeMetricFamily("lipsync_models_loaded", "Models loaded in memory now.", value=len(stats.loaded))
        yield GaugeMetricFamily("lipsync_model_memory_bytes", "Memory of the loaded models.", value=stats.bytes_held)
        yield GaugeMetricFamily("lipsync_model_limit", "Most models kept loaded at once.", value=stats.limit)
        yield GaugeMetricFamily("lipsync_stream_limit", "Most streams served at once.", value=verdict.limit)
        yield GaugeMetricFamily("lipsync_draining", "1 while shutting down (no new streams).",
                                value=int(verdict.draining))
        yield GaugeMetricFamily("lipsync_ready", "1 while /readyz says ready.", value=int(verdict.ready))


def add_ops_routes(app: FastAPI, *, store: ModelStore, capacity: CapacityView | None,
                   draining: Callable[[], bool] | None = None) -> None:
    """Add READY_PATH and METRICS_PATH to `app` (once: a second call changes nothing).

    store: the process's ModelStore (models found, models loaded). capacity: the stream slots the
    gRPC services share (None, or an object without `state()`: readiness ignores capacity).
    draining: says whether the server is shutting down (default: `capacity.draining`).
    """
    if any(getattr(route, "path", None) == READY_PATH for route in app.router.routes):
        return
    models_found = _ModelsFound(store)
    is_draining = _draining_of(capacity, draining)
    state = getattr(capacity, "state", None)

    def readiness() -> Readiness:
        in_use, limit = state() if state is not None else (0, 0)
        now_draining = is_draining()
        if now_draining:
            reason = "draining: the server is shutting down"
        elif not models_found():
            reason = "no model videos found"
        elif limit and in_use >= limit:
            reason = f"full: {in_use} of {limit} streams busy"
        else:
            reason = ""
        return Readiness(not reason, reason, in_use, limit, now_draining)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(store, readiness))

    def readyz() -> JSONResponse:
        verdict = readiness()
        body = {"ready": verdict.ready, "streams": verdict.streams, "limit": verdict.limit,
                "draining": verdict.draining}
        if verdict.ready:
            return JSONResponse(body)
        return JSONResponse({**body, "error": verdict.reason}, status_code=503)

    def metrics() -> Response:
        return Response(exposition(registry), media_type=EXPOSITION_CONTENT_TYPE)

    before = len(app.router.routes)
    app.add_api_route(READY_PATH, readyz, methods=["GET"])
    app.add_api_route(METRICS_PATH, metrics, methods=["GET"])
    # ahead of everything added before, the catch-all static mount at "/" included
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
