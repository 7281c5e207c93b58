"""Live traffic across `serve` replicas (issue 15, item 3): spread, graceful drain on SIGTERM, metrics.

Each replica is its own process running `serve.run_serve` (the code behind `lipsync serve`) on
loopback port 0, all on one prepared model cache; SIGTERM needs processes. The live clients are
one `LipSyncClient` over the list of the replicas' gRPC addresses, streaming speech in real time
with `stream_audio`, as many sessions of one application would. A client whose call fails
mid-stream reconnects and resumes from the next frame slot it has not got (first_frame = that
slot, the audio from that slot's first sample), so a moved stream loses no slot either.

What each replica counted is read from its `/metrics` while it runs and, once it has exited, from
the exposition it writes on its way out (a process gone cannot be scraped).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.main import get_command

from conftest import SAMPLE_SPEECH
from test_metrics import sample_value
from lipsync_cli.cli import app
from lipsync_cli.core.timing import first_sample_of_frame, frame_count
from lipsync_cli.defaults import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from lipsync_cli.errors import ServiceError, ServiceFullError
from lipsync_cli.rpc.client import LipSyncClient
from lipsync_cli.serve import DEFAULT_DRAIN_S, GRPC_GRACE_S, STOP_STREAMS_S
from lipsync_cli.web.ops import METRICS_PATH, READY_PATH

MODEL = "avatar"
RATE_HZ = 16_000  # samples/speech.wav
CHUNK_SAMPLES = 640  # 40 ms, one frame of the 25 fps sample: what a live client sends at a time
STREAM_S = 4.0  # speech each live stream sends, in real time
START_TIMEOUT_S = 60.0  # a replica's imports and first model load, on a busy 2-core machine
SETTLE_TIMEOUT_S = 60.0
RECONNECT_S = 0.2  # a client's pause before it reconnects
MAX_CALLS = 6  # calls one stream may take (the first and its reconnects)
MAX_STREAMS = 8  # slots per replica: room for the streams of a drained replica on the others

# `python -c` program of one replica: argv[1] is JSON {cache_dir, max_streams, drain_s, final_metrics}.
# It prints the bound addresses as one JSON line when both servers listen; after run_serve returns
# (drained), it writes the process's final metrics where told.
REPLICA = """
import json, logging, sys
from pathlib import Path
from lipsync_cli import metrics
from lipsync_cli.serve import ServeSettings, run_serve
from lipsync_cli.web import http_server, ops

# until create_app adds the ops routes itself: add_ops_routes does nothing the second time, so this stays harmless
_create_app = http_server.create_app
def create_app(store, options, **kw):
    app = _create_app(store, options, **kw)
    ops.add_ops_routes(app, store=store, capacity=kw.get("slots"))
    return app
http_server.create_app = create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
args = json.loads(sys.argv[1])
settings = ServeSettings(cache_dir=Path(args["cache_dir"]), max_streams=args["max_streams"], drain_s=args["drain_s"])
run_serve(settings, port=0, grpc_port=0, on_ready=lambda urls: print(json.dumps(urls), flush=True))
Path(args["final_metrics"]).write_bytes(metrics.exposition())
"""


@dataclass
class Replica:
    proc: subprocess.Popen
    http: str  # "http://127.0.0.1:PORT/"
    grpc: str  # "127.0.0.1:PORT"
    final_metrics: Path
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.http + path.lstrip("/"), timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, text
        return text

    def final(self) -> str:
        """The metrics it wrote on its way out (after exiting)."""
        return self.final_metrics.read_text()

    def stop(self, timeout_s: float = SETTLE_TIMEOUT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


def _start_replicas(n: int, tmp_path: Path, cache_dir: Path, *, drain_s: float) -> list[Replica]:
    procs = []
    for i in range(n):
        args = {"cache_dir": str(cache_dir), "max_streams": MAX_STREAMS, "drain_s": drain_s,
                "final_metrics": str(tmp_path / f"replica{i}.prom")}
        log = tmp_path / f"replica{i}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LIPSYNC_TOKEN_SECRET")}
        proc = subprocess.Popen([sys.executable, "-c", REPLICA, json.dumps(args)], stdout=subprocess.PIPE,
                                stderr=log.open("w"), text=True, env=env)
        procs.append((proc, args, log))
    replicas = []
    for proc, args, log in procs:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda p=proc: lines.put(p.stdout.readline()), daemon=True).start()
        try:
            urls = json.loads(lines.get(timeout=START_TIMEOUT_S))
        except (queue.Empty, json.JSONDecodeError):
            for p, _, _ in procs:
                p.kill()
            pytest.fail(f"a replica did not start:\n{log.read_text()[-3000:]}")
        replicas.append(Replica(proc, urls["http"], urls["grpc"], Path(args["final_metrics"]), log))
    return replicas


@dataclass
class LiveStream:
    """One live session: speech sent in real time, frames received by slot, reconnecting on failure."""

    audio: np.ndarray  # (n,) float32 mono at RATE_HZ
    fps: Fraction
    slots: list[int] = field(default_factory=list)  # the frame slots received, in order
    errors: list[ServiceError] = field(default_factory=list)  # each failed call's error
    calls: int = 0

    @property
    def total(self) -> int:
        return frame_count(len(self.audio), fps=self.fps, sample_rate_hz=RATE_HZ)

    def _chunks(self, start_sample: int, clock0: float):
        """The audio from start_sample, each chunk no earlier than it is "captured" (real time from clock0)."""
        for i in range(start_sample, len(self.audio), CHUNK_SAMPLES):
            end = min(i + CHUNK_SAMPLES, len(self.audio))
            time.sleep(max(0.0, clock0 + end / RATE_HZ - time.monotonic()))
            yield self.audio[i:end, None], time.monotonic()

    def run(self, client: LipSyncClient) -> None:
        clock0 = time.monotonic()
        while len(self.slots) < self.total and self.calls < MAX_CALLS:
            first = len(self.slots)
            start_sample = first_sample_of_frame(first, fps=self.fps, sample_rate_hz=RATE_HZ)
            self.calls += 1
            try:
                for frame in client.stream_audio(MODEL, self._chunks(start_sample, clock0), RATE_HZ, 1,
                                                 first_frame=first):
                    self.slots.append(first + frame.index)
            except ServiceError as exc:
                self.errors.append(exc)
                time.sleep(RECONNECT_S)


def _speech(i: int) -> np.ndarray:
    speech, rate = sf.read(SAMPLE_SPEECH, dtype="float32")
    assert rate == RATE_HZ and speech.ndim == 1
    start = int(i * 0.1 * RATE_HZ) % (len(speech) - int(STREAM_S * RATE_HZ))
    return speech[start:start + int(STREAM_S * RATE_HZ)]


def _start_streams(client: LipSyncClient, streams: list[LiveStream]) -> list[threading.Thread]:
    threads = [threading.Thread(target=s.run, args=(client,), daemon=True) for s in streams]
    for t in threads:
        t.start()
    return threads


def _wait_until(condition, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _served_calls(text: str) -> float:
    return sample_value(text, "lipsync_streams_total", call="StreamAudio")


def _connected_client(replicas: list[Replica]) -> tuple[LipSyncClient, Fraction]:
    """One client over all replicas, its channel connected to each (round-robin only picks connected ones)."""
    client = LipSyncClient(",".join(r.grpc for r in replicas))
    client.wait_ready(SETTLE_TIMEOUT_S)
    info = {m.name: m for m in client.list_models()}[MODEL]
    for _ in range(4 * len(replicas)):  # round-robin: these calls reach every replica once connected
        client.list_models()
    time.sleep(1.0)  # the channel connects to every address at once; a second is plenty on loopback
    return client, Fraction(info.fps).limit_denominator(1001)


def test_live_streams_across_three_replicas_survive_a_sigterm(tmp_path, cache_dir, sample_model):
    replicas = _start_replicas(3, tmp_path, cache_dir, drain_s=20.0)
    client = None
    try:
        for r in replicas:
            assert r.get("/healthz")[0] == 200
            assert r.get("/readyz")[0] == 200
        client, fps = _connected_client(replicas)
        streams = [LiveStream(_speech(i), fps) for i in range(12)]
        threads = _start_streams(client, streams)
        # every stream under way: how they spread over the replicas
        assert _wait_until(lambda: all(len(s.slots) >= 10 for s in streams)), [len(s.slots) for s in streams]
        spread = [_served_calls(r.metrics()) for r in replicas]
        assert sum(spread) == 12 and min(spread) >= 2, spread
        drained = replicas[0]
        drained.proc.send_signal(signal.SIGTERM)
        # not ready at once (the process is alive, /healthz still 200), while its streams go on
        assert _wait_until(lambda: drained.get("/readyz")[0] == 503, 10)
        status, body = drained.get("/readyz")
        assert status == 503 and json.loads(body)["draining"] is True
        assert drained.get("/healthz")[0] == 200
        # new sessions after the SIGTERM go to the other two
        late = [LiveStream(_speech(12 + i)[:RATE_HZ * 2], fps) for i in range(3)]
        threads += _start_streams(client, late)
        for t in threads:
            t.join(SETTLE_TIMEOUT_S * 2)
        assert drained.proc.wait(SETTLE_TIMEOUT_S) == 0
        exit_codes = [r.stop() for r in replicas[1:]]
        assert exit_codes == [0, 0]
    finally:
        if client is not None:
            client.close()
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.kill()
    log = drained.log.read_text()
    assert "draining: " in log and "drained" in log and "drain deadline" not in log, log[-2000:]

    # no frame slot lost: every stream got every slot, in order; the drained replica's streams finished there
    for s in streams + late:
        assert s.slots == list(range(s.total)), (len(s.slots), s.total, s.errors)
    assert not any(e for s in streams for e in s.errors)  # running streams finished, none had to move
    # a late call may have reached the draining replica before its GOAWAY: refused as full, then placed elsewhere
    assert all(isinstance(e, ServiceFullError) and "draining" in str(e) for s in late for e in s.errors)
    refused = sum(len(s.errors) for s in late)

    # what /metrics counted matches what the clients saw
    final = [r.final() for r in replicas]
    served = [_served_calls(text) for text in final]
    assert served[0] == spread[0], "the draining replica took a new stream"
    assert sum(served) == sum(s.calls for s in streams + late) - refused
    sent = [sample_value(text, "lipsync_frames_total", call="StreamAudio") for text in final]
    assert sum(sent) == sum(len(s.slots) for s in streams + late)
    for text, frames in zip(final, sent):
        assert sample_value(text, "lipsync_frame_seconds_count", call="StreamAudio") == frames
        assert sample_value(text, "lipsync_streams_open") == 0
    assert sample_value(final[0], "lipsync_streams_refused_total", reason="draining") == refused


def test_streams_still_running_at_the_drain_deadline_move_to_another_replica(tmp_path, cache_dir, sample_model):
    replicas = _start_replicas(2, tmp_path, cache_dir, drain_s=0.5)
    client = None
    try:
        client, fps = _connected_client(replicas)
        streams = [LiveStream(_speech(i), fps) for i in range(4)]
        threads = _start_streams(client, streams)
        assert _wait_until(lambda: all(len(s.slots) >= 10 for s in streams))
        spread = [_served_calls(r.metrics()) for r in replicas]
        assert spread == [2, 2], spread
        assert replicas[0].stop() == 0  # drained: its streams were stopped at 0.5 s and it exited
        for t in threads:
            t.join(SETTLE_TIMEOUT_S * 2)
        assert replicas[1].stop() == 0
    finally:
        if client is not None:
            client.close()
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.kill()
    assert "drain deadline: stopping 2 streams" in replicas[0].log.read_text()

    for s in streams:
        assert s.slots == list(range(s.total)), (len(s.slots), s.total, s.errors)
    moved = [s for s in streams if s.errors]
    assert len(moved) == 2  # the two on the drained replica, each moved once
    assert all(len(s.errors) == 1 and "stopped at its drain deadline" in str(s.errors[0]) for s in moved)
    final = [r.final() for r in replicas]
    assert [_served_calls(t) for t in final] == [2, 4]  # the survivor took the two moved streams
    assert sample_value(final[0], "lipsync_streams_open") == 0


def test_the_kubernetes_example_parses_and_matches_the_code():
    """deploy/ was never applied to a cluster nor built (no Docker engine, no cluster here): this is
    what can be checked without them, that the YAML parses and agrees with the code it describes."""
    yaml = pytest.importorskip("yaml")  # PyYAML: not a dependency of the project
    deploy = Path(__file__).resolve().parents[1] / "deploy"
    (deployment,) = yaml.safe_load_all((deploy / "k8s" / "deployment.yaml").read_text())
    grpc_service, http_service = yaml.safe_load_all((deploy / "k8s" / "service.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == METRICS_PATH
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT}
    # the kubelet's SIGKILL must not come before the drain and the gRPC stop are over
    assert pod["terminationGracePeriodSeconds"] > DEFAULT_DRAIN_S + STOP_STREAMS_S + GRPC_GRACE_S
    # client-side balancing needs a headless Service over the pods' gRPC port
    assert grpc_service["spec"]["clusterIP"] == "None" or grpc_service["spec"]["clusterIP"] is None
    assert grpc_service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in grpc_service["spec"]["ports"]] == ["grpc"]
    assert [p["targetPort"] for p in http_service["spec"]["ports"]] == ["http"]

    # the container's command line (Dockerfile ENTRYPOINT + the Deployment's args) is one `serve` accepts
    dockerfile = (deploy / "Dockerfile").read_text()
    entrypoint = json.loads(next(line for line in dockerfile.splitlines()
                                 if line.startswith("ENTRYPOINT "))[len("ENTRYPOINT "):])
    assert entrypoint[:2] == ["lipsync", "serve"]
    serve = get_command(app).commands["serve"]
    context = serve.make_context("serve", entrypoint[2:] + container["args"])
    assert context.params["host"] == "0.0.0.0" and context.params["max_streams"] == 8
    assert (context.params["port"], context.params["grpc_port"]) == (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT)
