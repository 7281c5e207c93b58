"""The gRPC service and its client, against real servers on port 0 and the committed stubs."""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import REPO, SPEECH_48K, shared
from helpers import make_shadowed_models
from lipsync_cli.core.driver import drive
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.generators import make_generator
from lipsync_cli.core.timing import first_sample_of_frame, frame_count, ping_pong
from lipsync_cli.errors import AudioError, ModelNotFoundError, ServiceError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, resample
from lipsync_cli.media.store import ModelStore
from lipsync_cli.rpc.client import LipSyncClient, channel_target, from_proto
from lipsync_cli.rpc.proto_gen import lipsync_pb2, lipsync_pb2_grpc
from lipsync_cli.rpc.service import create_server

MODEL = "avatar"  # the bundled sample answers to its name
CLIP_S = 3.0  # seconds of real speech per clip: enough for speech and pauses, quick to render
CHUNK_MS = 40
SLOW_RENDER_S = 0.02  # per frame, so a cancelled call would clearly go on working if not stopped
SERVER_PATHS = str(REPO.parent)  # the checkout and what is next to it: no business of a remote client


class CountingGenerator:
    """The real generator, counting rendered frames (and optionally slowed down or failing)."""

    name = "counting"

    def __init__(self, *, delay_s: float = 0.0, fail: bool = False):
        self.inner, self.delay_s, self.fail = make_generator(), delay_s, fail
        self.rendered = 0
        self.lock = threading.Lock()

    def open_stream(self, model):
        stream = self.inner.open_stream(model)
        counter = self

        class Counted:
            def render(self, **kwargs):
                if counter.fail:
                    raise RuntimeError("the generator broke")
                time.sleep(counter.delay_s)
                with counter.lock:
                    counter.rendered += 1
                return stream.render(**kwargs)

        return Counted()


def _start(store, generator):
    server, port = create_server(store=store, generator=generator)
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def service(store, sample_model):
    generator = CountingGenerator()
    server, target = _start(store, generator)
    yield target, generator
    server.stop(grace=None)


@pytest.fixture(scope="module")
def slow_service(store, sample_model):
    generator = CountingGenerator(delay_s=SLOW_RENDER_S)
    server, target = _start(store, generator)
    yield target, generator
    server.stop(grace=None)


@pytest.fixture()
def stub(service):
    with grpc.insecure_channel(service[0]) as channel:
        yield lipsync_pb2_grpc.LipSyncStub(channel)


@pytest.fixture(scope="module")
def speech():
    """A few seconds of real 48 kHz stereo speech: (n, 2) float32 and its rate."""
    samples, rate = sf.read(str(shared(SPEECH_48K)), dtype="float32", always_2d=True)
    return samples[: int(CLIP_S * rate)], rate


def _fmt(rate_hz=48_000, channels=1, sample_type=lipsync_pb2.PCM_S16LE):
    return lipsync_pb2.AudioFormat(sample_rate_hz=rate_hz, channels=channels, sample_type=sample_type)


def _tone_s16(seconds: float, rate_hz: int = 48_000) -> bytes:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected_frames(n_samples: int, rate_hz: int, fps) -> int:
    n16 = len(resample(np.zeros(n_samples, np.float32), from_rate_hz=rate_hz, to_rate_hz=SAMPLE_RATE_HZ))
    return frame_count(n16, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)


def _check_frame(frame, i, model, first_frame):
    """A frame off the wire: a protobuf reply (the raw stub) or the client's MouthFrame."""
    if isinstance(frame, lipsync_pb2.MouthFrame):
        frame = from_proto(frame)
    assert frame.index == i
    assert frame.model_frame == ping_pong(first_frame + i, model.n_frames)
    assert frame.image is not None and frame.image.shape == (320, 320, 3) and frame.image.dtype == np.uint8
    x0, y0, x1, y1 = frame.bounds
    assert 0 <= x0 < x1 <= model.width and 0 <= y0 < y1 <= model.height
    assert frame.params.shape in set("ABCDEFGHX")
    assert 0.0 <= frame.params.open <= 1.0
    assert frame.params.closed == (frame.params.shape == "A")


# --- generated stubs ---------------------------------------------------------------------------

def test_committed_stubs_match_the_proto(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    gen_protos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_protos)
    from importlib.metadata import version

    committed_by = lipsync_pb2_grpc.GRPC_GENERATED_VERSION
    if version("grpcio-tools") != committed_by:
        pytest.skip(f"the stubs were generated by grpcio-tools {committed_by}, {version('grpcio-tools')} is installed")
    for path in gen_protos.generate(tmp_path):
        committed = gen_protos.OUT_DIR / path.name
        assert committed.exists(), f"{committed} is missing: run python scripts/gen_protos.py"
        assert path.read_text() == committed.read_text(), f"{committed} is stale: run python scripts/gen_protos.py"
    assert "from . import lipsync_pb2" in (tmp_path / "lipsync_pb2_grpc.py").read_text()


# --- health, reflection, models ----------------------------------------------------------------

def test_health_serving_and_reflection(service):
    with grpc.insecure_channel(service[0]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "lipsync.v1.LipSync"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
                health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "lipsync.v1.LipSync" in services
    assert "grpc.health.v1.Health" in services


def test_extra_servicers_share_the_server(store):
    def add_echo(server):
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)  # bytes in, bytes out
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Say": handler})])
        return ["test.Echo"]

    server, port = create_server(store=store, generator=CountingGenerator(), extra_servicers=[add_echo])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary("/test.Echo/Say")(b"hello", timeout=10) == b"hello"
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="test.Echo"))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert "test.Echo" in ProtoReflectionDescriptorDatabase(channel).get_services()
    finally:
        server.stop(grace=None)


def test_list_models(service, sample_model):
    with LipSyncClient(service[0]) as client:
        models = {m.name: m for m in client.list_models()}
    info = models[MODEL]
    assert (info.width, info.height, info.frames) == (sample_model.width, sample_model.height, sample_model.n_frames)
    assert info.fps == float(sample_model.fps) and info.prepared


def test_list_models_lists_what_a_call_can_name(cache_dir, tmp_path, monkeypatch):
    """Each listed name can be called, with the video a call by that name gets; no other names."""
    monkeypatch.chdir(tmp_path)  # none of the working directory's model folders
    models = make_shadowed_models(tmp_path)
    store = ModelStore(cache_dir=cache_dir, models_dir=models)
    server, port = create_server(store=store, generator=CountingGenerator())
    try:
        with LipSyncClient(f"127.0.0.1:{port}") as client:
            listed = {m.name: m for m in client.list_models()}
    finally:
        server.stop(grace=None)
    assert set(listed) == {"alice", MODEL}, "'my clip' is no name a call may use"
    assert store.resolve("alice", names_only=True) == models / "alice.mp4"
    assert (listed["alice"].width, listed["alice"].height) == (64, 64), "the .mp4 a call gets, not the .mov"
    with pytest.raises(ModelNotFoundError):
        store.resolve("my clip", names_only=True)


def test_a_busy_port_is_refused(store):
    """SO_REUSEPORT is off: a second server on the same port fails instead of sharing the calls."""
    server, port = create_server(store=store, generator=CountingGenerator())
    try:
        with pytest.raises(ServiceError) as info:
            create_server(f"127.0.0.1:{port}", store=store, generator=CountingGenerator())
        assert str(info.value) == (f"cannot listen on 127.0.0.1:{port}: the port is in use (by another `lipsync "
                                   "serve`?) or the host is not an address of this machine; pick another port or host")
    finally:
        server.stop(grace=None)


# --- RenderClip ---------------------------------------------------------------------------------

def test_render_clip_of_real_speech(service, sample_model, speech):
    samples, rate = speech
    first_frame = sample_model.n_frames - 10  # crosses the turn of the ping-pong loop
    with LipSyncClient(service[0]) as client:
        frames = list(client.render_clip(MODEL, samples, rate, first_frame=first_frame))
    assert len(frames) == _expected_frames(len(samples), rate, sample_model.fps)
    for i, frame in enumerate(frames):
        _check_frame(frame, i, sample_model, first_frame)
    assert all(isinstance(f, MouthFrame) for f in frames)
    speaking = [f.speech for f in frames]
    assert any(speaking) and not all(speaking), "real speech has both speech and pauses"
    assert max(f.params.open for f in frames) > 0.2


def test_client_frames_carry_what_the_reply_carries():
    image = np.full((32, 32, 3), (10, 200, 30), np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    reply = lipsync_pb2.MouthFrame(index=3, model_frame=7, prediction_data=jpeg, bounds=[1, 2, 3, 4], speech=True,
                                   mouth_open=0.5, shape="C", captured_at_s=12.5)
    frame = from_proto(reply)
    assert (frame.index, frame.model_frame, frame.captured_at_s, frame.speech) == (3, 7, 12.5, True)
    assert (frame.params.open, frame.params.shape, frame.params.closed) == (0.5, "C", False)
    assert frame.bounds.tolist() == [1, 2, 3, 4]
    assert np.abs(frame.image.astype(int) - image).max() <= 4  # JPEG of a flat colour
    assert from_proto(lipsync_pb2.MouthFrame(shape="A")).params.closed
    damaged = [b"", b"not a jpeg", cv2.imencode(".jpg", image[:, :20])[1].tobytes(),  # not square
               cv2.imencode(".jpg", image[:8, :8])[1].tobytes()]  # too small
    for data in damaged:
        assert from_proto(lipsync_pb2.MouthFrame(prediction_data=data)).image is None


@pytest.mark.parametrize(("fmt", "audio", "needle"), [
    (_fmt(rate_hz=4_000), _tone_s16(1, 4_000), "sample rate"),
    (_fmt(rate_hz=400_000), _tone_s16(0.1, 400_000), "sample rate"),
    (_fmt(channels=0), _tone_s16(1), "channels"),
    (_fmt(channels=9), _tone_s16(1) * 9, "channels"),
    (_fmt(sample_type=lipsync_pb2.SAMPLE_TYPE_UNSPECIFIED), _tone_s16(1), "sample type"),
    (_fmt(sample_type=7), _tone_s16(1), "sample type"),
    (_fmt(), _tone_s16(1) + b"\0", "whole number"),
    (_fmt(channels=2), _tone_s16(1) + b"\0\0", "whole number"),
    (_fmt(), b"", "no audio"),
    (_fmt(), _tone_s16(0.01), "shorter than one video frame"),
    (_fmt(sample_type=lipsync_pb2.FLOAT32LE), np.array([0.1, np.nan] * 24_000, "<f4").tobytes(), "NaN"),
    (_fmt(sample_type=lipsync_pb2.FLOAT32LE), np.array([0.1, np.inf] * 24_000, "<f4").tobytes(), "NaN"),
])
def test_render_clip_refuses_bad_audio(stub, sample_model, fmt, audio, needle):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.RenderClip(lipsync_pb2.ClipRequest(model=MODEL, format=fmt, audio=audio)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()


@pytest.mark.parametrize("name", ["no-such-model", "../samples/avatar", "/etc/passwd", "avatar/../avatar"])
def test_unknown_model_is_not_found_and_paths_are_not_models(stub, name):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.RenderClip(lipsync_pb2.ClipRequest(model=name, format=_fmt(), audio=_tone_s16(0.5))))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert SERVER_PATHS not in info.value.details(), "server paths stay on the server"


def test_unexpected_failure_is_internal_and_the_server_lives_on(store, sample_model):
    server, target = _start(store, CountingGenerator(fail=True))
    try:
        with grpc.insecure_channel(target) as channel:
            stub = lipsync_pb2_grpc.LipSyncStub(channel)
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as info:
                    list(stub.RenderClip(lipsync_pb2.ClipRequest(model=MODEL, format=_fmt(), audio=_tone_s16(0.5))))
                assert info.value.code() == grpc.StatusCode.INTERNAL
                assert "the generator broke" in info.value.details()
            assert stub.ListModels(lipsync_pb2.ListModelsRequest()).models
    finally:
        server.stop(grace=None)


# --- StreamAudio --------------------------------------------------------------------------------

def test_stream_answers_chunk_by_chunk(service, sample_model, speech):
    """Frames come back while input is still being sent, each naming the chunk that completed it."""
    samples, rate = speech
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    chunk = rate * CHUNK_MS // 1000
    n_chunks = -(-len(pcm) // chunk)
    held_back = n_chunks // 2
    first_frame_seen = threading.Event()
    sent, answered_in_time = [], []

    def requests():
        # no assertions in here: gRPC reads this in its own thread and would only cancel the call
        yield lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=MODEL, format=_fmt(rate, 2)))
        for k in range(n_chunks):
            if k == held_back:
                # the second half goes only once a frame has come back: no answer, no more input
                answered_in_time.append(first_frame_seen.wait(timeout=20))
            sent.append(k)
            yield lipsync_pb2.AudioChunk(audio=pcm[k * chunk:(k + 1) * chunk].tobytes(), captured_at_s=float(k))

    frames, chunks_sent_at_frame = [], []
    with grpc.insecure_channel(service[0]) as channel:
        for frame in lipsync_pb2_grpc.LipSyncStub(channel).StreamAudio(requests()):
            first_frame_seen.set()
            chunks_sent_at_frame.append(len(sent))
            frames.append(frame)

    assert answered_in_time == [True], "no frame came back while input was still open"
    assert chunks_sent_at_frame[0] <= held_back
    assert len(frames) == _expected_frames(len(pcm), rate, sample_model.fps)
    for i, frame in enumerate(frames):
        _check_frame(frame, i, sample_model, 0)
        k = int(frame.captured_at_s)
        assert frame.captured_at_s == k and k < n_chunks
        # the chunk named holds audio at or past the frame's end: it is the one that completed it
        frame_end = first_sample_of_frame(i + 1, fps=sample_model.fps, sample_rate_hz=rate)
        assert (k + 1) * chunk >= frame_end or k == n_chunks - 1
    assert [f.captured_at_s for f in frames] == sorted(f.captured_at_s for f in frames)


def test_a_live_stream_gives_the_live_drivers_frames_for_the_clip(service, speech, sample_model):
    samples, rate = speech
    chunk = rate * CHUNK_MS // 1000
    with LipSyncClient(service[0]) as client:
        clip = list(client.render_clip(MODEL, samples, rate))
        live = list(client.stream_audio(
            MODEL, ((samples[i:i + chunk], i / rate) for i in range(0, len(samples), chunk)), rate, 2))
    # a live stream is driven from the spectrum (a render from the phones): the same frames as the
    # live driver on the same audio, up to PCM16 and resampling
    mono = resample(samples.mean(axis=1), from_rate_hz=rate, to_rate_hz=SAMPLE_RATE_HZ)
    expected = drive(mono, fps=sample_model.fps)
    assert len(live) == len(clip) == len(expected)
    assert np.mean([a.speech == b.speech for a, b in zip(expected, live)]) >= 0.95
    assert np.abs(np.array([a.open - b.params.open for a, b in zip(expected, live)])).mean() < 0.05


@pytest.mark.parametrize(("messages", "needle"), [
    ([], "first message"),
    ([lipsync_pb2.AudioChunk(audio=_tone_s16(0.1))], "first message"),
    ([lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=MODEL, format=_fmt(channels=0)))], "channels"),
    ([lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=MODEL, format=_fmt())),
      lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=MODEL, format=_fmt()))], "only the first"),
    ([lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=MODEL, format=_fmt())),
      lipsync_pb2.AudioChunk(audio=b"\0\0\0")], "whole number"),
    ([lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(
        model=MODEL, format=_fmt(sample_type=lipsync_pb2.FLOAT32LE))),
      lipsync_pb2.AudioChunk(audio=np.full(960, np.nan, "<f4").tobytes())], "NaN"),
])
def test_stream_refuses_bad_requests(stub, sample_model, messages, needle):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamAudio(iter(messages)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()


def test_stream_of_unknown_model_is_not_found(stub):
    start = lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model="no-such-model", format=_fmt()))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamAudio(iter([start])))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- cancellation -------------------------------------------------------------------------------

def _settled_count(generator) -> int:
    """The render count once it stops moving (a frame in progress may still finish)."""
    time.sleep(10 * SLOW_RENDER_S)
    return generator.rendered


def test_cancelled_clip_stops_the_server_work(slow_service, speech):
    target, generator = slow_service
    samples, rate = speech
    before = generator.rendered
    with LipSyncClient(target) as client:
        frames = client.render_clip(MODEL, samples, rate)
        for _ in zip(range(3), frames):
            pass
        frames.close()  # the caller stops reading: the call is cancelled
        done = _settled_count(generator)
        time.sleep(20 * SLOW_RENDER_S)
        assert generator.rendered == done, "the server kept rendering for a cancelled call"
    assert done - before < 20, "the server rendered far past what the client read"


def test_cancelled_stream_stops_the_server_work(slow_service, speech):
    target, generator = slow_service
    samples, rate = speech
    chunk = rate * CHUNK_MS // 1000
    before = generator.rendered
    with LipSyncClient(target) as client:
        frames = client.stream_audio(
            MODEL, ((samples[i:i + chunk], 0.0) for i in range(0, len(samples), chunk)), rate, 2)
        for _ in zip(range(3), frames):
            pass
        frames.close()
        done = _settled_count(generator)
        time.sleep(20 * SLOW_RENDER_S)
        assert generator.rendered == done, "the server kept rendering for a cancelled stream"
    assert done - before < 20


# --- balancing and client errors ----------------------------------------------------------------

ROUND_ROBIN_CALLS = 20
ROUND_ROBIN_SHARE = (0.35, 0.65)  # each of two replicas' share of the calls once both are connected


def test_round_robin_over_two_servers(store, sample_model):
    generators = [CountingGenerator(), CountingGenerator()]
    servers = [_start(store, g) for g in generators]
    try:
        ports = [target.rsplit(":", 1)[1] for _, target in servers]
        with LipSyncClient(",".join(f"localhost:{p}" for p in ports)) as client:
            client.wait_ready(10)
            short = np.zeros((SAMPLE_RATE_HZ // 10, 1), np.float32)
            frames_per_call = len(list(client.render_clip(MODEL, short, SAMPLE_RATE_HZ)))
            assert frames_per_call >= 1
            # the channel is ready as soon as one replica is: call until both have answered once
            for _ in range(ROUND_ROBIN_CALLS):
                if all(g.rendered for g in generators):
                    break
                list(client.render_clip(MODEL, short, SAMPLE_RATE_HZ))
            assert all(g.rendered for g in generators), [g.rendered for g in generators]
            before = [g.rendered for g in generators]
            for _ in range(ROUND_ROBIN_CALLS):
                list(client.render_clip(MODEL, short, SAMPLE_RATE_HZ))
        calls = [(g.rendered - b) / frames_per_call for g, b in zip(generators, before)]
        assert sum(calls) == ROUND_ROBIN_CALLS
        low, high = ROUND_ROBIN_SHARE
        assert all(low * ROUND_ROBIN_CALLS <= c <= high * ROUND_ROBIN_CALLS for c in calls), calls
    finally:
        for server, _ in servers:
            server.stop(grace=None)


def test_channel_targets():
    assert channel_target("127.0.0.1:5001") == "127.0.0.1:5001"
    assert channel_target("dns:///lipsync.internal:5001") == "dns:///lipsync.internal:5001"
    assert channel_target("127.0.0.1:5001, localhost:5002") == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert channel_target("[::1]:5001,[::1]:5002") == "ipv6:[::1]:5001,[::1]:5002"
    for bad in ("localhost", "localhost:port", "a:1,b"):
        with pytest.raises(ServiceError, match="HOST:PORT"):
            channel_target(bad)


def test_client_says_when_nothing_answers():
    target = f"127.0.0.1:{_free_port()}"
    expected = f"nothing answers at {target}: start `lipsync serve` there or leave out --server"
    with LipSyncClient(target) as client:
        with pytest.raises(ServiceError) as info:
            client.list_models()
        assert str(info.value) == expected
        with pytest.raises(ServiceError) as info:
            list(client.render_clip(MODEL, np.zeros((1600, 1), np.float32), SAMPLE_RATE_HZ))
        assert str(info.value) == expected
        with pytest.raises(ServiceError, match="nothing answers"):
            client.wait_ready(0.2)


def test_client_maps_service_errors(service):
    with LipSyncClient(service[0]) as client:
        with pytest.raises(ModelNotFoundError, match="no-such-model"):
            list(client.render_clip("no-such-model", np.zeros((1600, 1), np.float32), SAMPLE_RATE_HZ))
        with pytest.raises(AudioError, match="sample rate"):
            list(client.render_clip(MODEL, np.zeros((1600, 1), np.float32), 4_000))
        with pytest.raises(AudioError, match="NaN"):
            list(client.render_clip(MODEL, np.full((1600, 1), np.nan, np.float32), SAMPLE_RATE_HZ))
        with pytest.raises(AudioError, match="expected"):  # a chunk with the wrong channel count
            list(client.stream_audio(MODEL, iter([(np.zeros((640, 2), np.float32), 0.0)]), SAMPLE_RATE_HZ, 1))


SERVER_SCRIPT = """
import sys, time
from pathlib import Path
from lipsync_cli.rpc.service import create_server
from lipsync_cli.media.store import ModelStore
sys.path.insert(0, {tests!r})
from test_service import CountingGenerator
server, port = create_server(store=ModelStore(cache_dir=Path({cache!r})), generator=CountingGenerator(delay_s=0.02))
print(port, flush=True)
time.sleep(600)
"""


def test_client_says_when_the_server_dies_mid_render(cache_dir, sample_model, speech):
    samples, rate = speech
    script = SERVER_SCRIPT.format(tests=str(REPO / "tests"), cache=str(cache_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "the server process did not start (see its stderr above)"
        port = int(line)
        with LipSyncClient(f"127.0.0.1:{port}") as client:
            frames = client.render_clip(MODEL, samples, rate)
            with pytest.raises(ServiceError) as info:
                for i, _ in enumerate(frames):
                    if i == 2:
                        proc.send_signal(signal.SIGKILL)
        assert str(info.value) == f"the lip-sync service at 127.0.0.1:{port} went away mid-render"
    finally:
        proc.kill()
        proc.wait()
