"""Readiness, draining and metrics of one server (issue 15, items 3 and 4), on a real gRPC server on
port 0 and the real HTTP app (`create_app` with `web.ops.add_ops_routes`).

The metrics are per process and other tests in this process count too: every assertion on a
counter is on its difference across what the test did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from helpers import wait_until
from lipsync_cli.core.generators import make_generator
from lipsync_cli.errors import ServiceError, ServiceFullError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ
from lipsync_cli.rpc.capacity import Capacity
from lipsync_cli.rpc.client import LipSyncClient
from lipsync_cli.rpc.legacy_service import add_legacy_service
from lipsync_cli.rpc.limits import DRAINING_MESSAGE_PREFIX, draining_message
from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2, lipsync_legacy_pb2_grpc
from lipsync_cli.rpc.service import create_server
from lipsync_cli.web.http_server import create_app
from lipsync_cli.web.ops import add_ops_routes
from lipsync_cli.web.options import HttpOptions

MODEL = "avatar"
LIMIT = 2
CHUNK_SAMPLES = 640  # 40 ms at 16 kHz: one frame of the 25 fps sample
ANSWER_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 10.0



def sample_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` in a /metrics text."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def _tone(n_chunks: int, *, pace_s: float = 0.0, until: threading.Event | None = None
          ) -> Iterator[tuple[np.ndarray, float]]:
    for k in range(n_chunks):
        if until is not None and until.is_set():
            return
        t = (np.arange(CHUNK_SAMPLES) + k * CHUNK_SAMPLES) / SAMPLE_RATE_HZ
        yield (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[:, None], time.monotonic()
        time.sleep(pace_s)


@pytest.fixture()
def server(store, sample_model):
    """A gRPC server of LIMIT slots and the HTTP app over the same store and capacity: (target, capacity, http)."""
    capacity = Capacity(LIMIT)
    generator = make_generator()
    grpc_server, port = create_server(store=store, generator=generator, capacity=capacity,
                                      extra_servicers=[add_legacy_service(store, generator, capacity)])
    app = create_app(store, HttpOptions(), slots=capacity)
    add_ops_routes(app, store=store, capacity=capacity)
    with TestClient(app) as http:
        yield f"127.0.0.1:{port}", capacity, http
    grpc_server.stop(grace=None)


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=ANSWER_TIMEOUT_S).status


def test_metrics_count_a_stream_its_frames_and_their_service_time(server):
    target, capacity, http = server
    before = http.get("/metrics").text
    with LipSyncClient(target) as client:
        frames = list(client.stream_audio(MODEL, _tone(25), SAMPLE_RATE_HZ, 1))
    assert len(frames) == 25
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    after = response.text

    def delta(name: str, **labels: str) -> float:
        return sample_value(after, name, **labels) - sample_value(before, name, **labels)

    assert delta("lipsync_streams_total", api="lipsync", call="StreamAudio") == 1
    assert delta("lipsync_frames_total", call="StreamAudio") == 25
    assert delta("lipsync_frame_seconds_count", call="StreamAudio") == 25
    assert delta("lipsync_frame_seconds_sum", call="StreamAudio") > 0
    assert delta("lipsync_streams_open") == 0 and capacity.state() == (0, LIMIT)
    # this server's own state, from its store and capacity
    assert sample_value(after, "lipsync_models_loaded") >= 1
    assert sample_value(after, "lipsync_model_memory_bytes") > 0
    assert sample_value(after, "lipsync_stream_limit") == LIMIT
    assert sample_value(after, "lipsync_draining") == 0 and sample_value(after, "lipsync_ready") == 1
    names = {f.name for f in text_string_to_metric_families(after)}
    assert names and all(n.startswith("lipsync_") for n in names), names


def test_the_original_api_counts_its_frames(server):
    target, _, http = server
    before = sample_value(http.get("/metrics").text, "lipsync_frames_total", call="StreamInference")
    with grpc.insecure_channel(target) as channel:
        stub = lipsync_legacy_pb2_grpc.LipSyncServiceStub(channel)
        requests = [lipsync_legacy_pb2.InferenceRequest(model_name=MODEL, frame_id=i) for i in range(3)]
        replies = list(stub.StreamInference(iter(requests), timeout=ANSWER_TIMEOUT_S))
    assert [r.success for r in replies] == [True] * 3
    assert sample_value(http.get("/metrics").text, "lipsync_frames_total", call="StreamInference") == before + 3


def test_readiness_and_health_follow_the_capacity(server):
    target, capacity, http = server
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "streams": 0, "limit": LIMIT, "draining": False}
    assert _health(target, "lipsync.v1.LipSync") == health_pb2.HealthCheckResponse.SERVING
    assert http.get("/healthz").status_code == 200
    with capacity.slot(), capacity.slot():
        full = http.get("/readyz")
        assert full.status_code == 503
        assert full.json()["error"] == f"full: {LIMIT} of {LIMIT} streams busy"
        assert _health(target, "lipsync.v1.LipSync") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(target, "lipsync.v1.LipSync") == _health(target, "lipsyncsrv.LipSyncService")
        assert _health(target, "") == health_pb2.HealthCheckResponse.SERVING  # busy, not broken
    assert http.get("/readyz").status_code == 200
    assert _health(target, "lipsync.v1.LipSync") == health_pb2.HealthCheckResponse.SERVING


def test_a_draining_server_refuses_new_streams_and_stops_running_ones_at_the_deadline(server):
    target, capacity, http = server
    stop_sending = threading.Event()
    outcome: list[object] = []
    got = []

    def running() -> None:
        try:
            with LipSyncClient(target) as client:
                for frame in client.stream_audio(MODEL, _tone(2000, pace_s=0.01, until=stop_sending),
                                                 SAMPLE_RATE_HZ, 1):
                    got.append(frame.index)
            outcome.append("ended")
        except ServiceError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=running)
    thread.start()
    try:
        assert wait_until(lambda: len(got) >= 5)
        before = http.get("/metrics").text
        capacity.drain()
        drained = http.get("/readyz")
        assert drained.status_code == 503
        assert drained.json() == {"ready": False, "streams": 1, "limit": LIMIT, "draining": True,
                                  "error": "draining: the server is shutting down"}
        for service in ("", "lipsync.v1.LipSync", "lipsyncsrv.LipSyncService"):
            assert _health(target, service) == health_pb2.HealthCheckResponse.NOT_SERVING
        # a new call is refused with UNAVAILABLE (clients with a list go elsewhere), the running one goes on
        with LipSyncClient(target) as client:
            with pytest.raises(ServiceFullError, match=DRAINING_MESSAGE_PREFIX):
                list(client.stream_audio(MODEL, _tone(5), SAMPLE_RATE_HZ, 1))
        with grpc.insecure_channel(target) as channel:
            stub = lipsync_legacy_pb2_grpc.LipSyncServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.StreamInference(iter([lipsync_legacy_pb2.InferenceRequest(model_name=MODEL)])))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        reached = len(got)
        assert wait_until(lambda: len(got) >= reached + 5), "the running stream stopped when draining began"
        after = http.get("/metrics").text
        assert sample_value(after, "lipsync_streams_refused_total", reason="draining") - \
            sample_value(before, "lipsync_streams_refused_total", reason="draining") == 2
        assert sample_value(after, "lipsync_draining") == 1
        # the drain deadline: the running stream is stopped with UNAVAILABLE, which a client resumes elsewhere
        capacity.stop_streams()
        thread.join(SETTLE_TIMEOUT_S)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], ServiceError)
        assert not isinstance(outcome[0], ServiceFullError)
        assert draining_message(stopped=True) in str(outcome[0])
        assert capacity.wait_idle(SETTLE_TIMEOUT_S)
    finally:
        stop_sending.set()
        thread.join(SETTLE_TIMEOUT_S)


def test_ops_routes_come_before_the_static_page_and_are_added_once(store):
    app = create_app(store, HttpOptions())
    add_ops_routes(app, store=store, capacity=None)
    routes = len(app.router.routes)
    add_ops_routes(app, store=store, capacity=None)
    assert len(app.router.routes) == routes
    with TestClient(app) as http:
        # no capacity given: ready as long as models are found (the bundled sample is)
        assert http.get("/readyz").json() == {"ready": True, "streams": 0, "limit": 0, "draining": False}
        assert http.get("/metrics").status_code == 200
        assert http.get("/").status_code == 200  # the page is still served



def test_token_requests_are_counted_by_outcome(store, monkeypatch):
    # no key on this server: every mint is a failure with reason no_key, and a refused one rate_limited
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    app = create_app(store, HttpOptions(token_rate_per_min=2), slots=Capacity(LIMIT))
    with TestClient(app) as client:
        before = client.get("/metrics").text
        codes = [client.post("/api/token").status_code for _ in range(3)]
        after = client.get("/metrics").text
    assert codes == [503, 503, 429]

    def delta(reason: str) -> float:
        name = "lipsync_token_mint_failures_total"
        return sample_value(after, name, reason=reason) - sample_value(before, name, reason=reason)

    assert delta("no_key") == 2 and delta("rate_limited") == 1
    assert sample_value(after, "lipsync_token_mints_total") == sample_value(before, "lipsync_token_mints_total")
