"""Capacity, deadlines and sizes of the gRPC service (issue 14, items 1 and 2), on real servers on port 0.

A full server refuses at once and says so, health and ListModels answer however busy the streams
are, a replica list moves a refused call to the next replica; deadlines and stalled streams end
the server's work; messages over the limit are refused, and a clip over it is streamed and gives
the frames RenderClip gives.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import SAMPLE_SPEECH
from helpers import wait_until
from test_service import CountingGenerator
from lipsync_cli.core.engine import LiveEngine, render_clip
from lipsync_cli.core.generators import make_generator
from lipsync_cli.core.timing import frame_count
from lipsync_cli.errors import ServiceError, ServiceFullError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio, resample
from lipsync_cli.rpc.capacity import Capacity
from lipsync_cli.rpc.client import LipSyncClient, replica_count
from lipsync_cli.rpc.legacy_service import add_legacy_service
from lipsync_cli.rpc.limits import MAX_MESSAGE_BYTES, STREAM_COST_CORES, default_max_streams, full_message
from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2, lipsync_legacy_pb2_grpc, lipsync_pb2, lipsync_pb2_grpc
from lipsync_cli.rpc.service import create_server

MODEL = "avatar"
LIMIT = 2  # stream slots of the servers under test
ANSWER_TIMEOUT_S = 10.0  # a deadline for calls that must answer (the 100 ms figure is bench/soak.py's)
SETTLE_TIMEOUT_S = 10.0  # how long a server may take to notice a stream has ended
IDLE_S = 0.5  # the stalled-stream limit of the server under test
SLOW_RENDER_S = 0.02


def _fmt16():
    return lipsync_pb2.AudioFormat(sample_rate_hz=SAMPLE_RATE_HZ, channels=1, sample_type=lipsync_pb2.PCM_S16LE)



class HeldStream:
    """A StreamAudio call that sends its start and one chunk, then nothing until released."""

    def __init__(self, stub: lipsync_pb2_grpc.LipSyncStub):
        self.release = threading.Event()
        self.call = stub.StreamAudio(self._requests())

    def _requests(self):
        yield lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=MODEL, format=_fmt16()))
        yield lipsync_pb2.AudioChunk(audio=np.zeros(SAMPLE_RATE_HZ // 5, "<i2").tobytes())
        self.release.wait()

    def first_reply(self):
        return next(self.call)

    def close(self) -> None:
        self.release.set()
        self.call.cancel()


@pytest.fixture()
def full_server(store, sample_model):
    """A server of LIMIT slots, all taken by held streams: (target, capacity, stub)."""
    capacity = Capacity(LIMIT)
    generator = make_generator()
    server, port = create_server(store=store, generator=generator, capacity=capacity,
                                 extra_servicers=[add_legacy_service(store, generator, capacity)])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = lipsync_pb2_grpc.LipSyncStub(channel)
    held = [HeldStream(stub) for _ in range(LIMIT)]
    for stream in held:
        stream.first_reply()  # the call is being served: it holds its slot
    assert capacity.state() == (LIMIT, LIMIT)
    yield f"127.0.0.1:{port}", capacity, stub
    for stream in held:
        stream.close()
    channel.close()
    server.stop(grace=None)


def test_capacity_counts_and_refuses():
    capacity = Capacity(2)
    assert capacity.state() == (0, 2)
    with capacity.slot(), capacity.slot():
        assert capacity.state() == (2, 2)
        with pytest.raises(ServiceFullError) as info:
            with capacity.slot():
                pass
        assert str(info.value) == "the lip-sync service is full: 2 of 2 streams busy; try another replica or later"
    assert capacity.state() == (0, 2)
    with pytest.raises(ValueError):
        Capacity(0)


def test_default_limit_follows_the_cores_and_the_cost_of_a_stream():
    assert default_max_streams(2) == int(2 * 0.75 / STREAM_COST_CORES)
    assert default_max_streams(16) > default_max_streams(2) >= 1
    assert default_max_streams(1) >= 1


def test_a_full_server_refuses_new_streams_at_once_and_still_answers_the_rest(full_server):
    target, capacity, stub = full_server
    for call in (lambda: next(HeldStream(stub).call),
                 lambda: next(stub.RenderClip(lipsync_pb2.ClipRequest(
                     model=MODEL, format=_fmt16(), audio=np.zeros(SAMPLE_RATE_HZ, "<i2").tobytes())))):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == full_message(LIMIT, LIMIT)
    # many more refused at once, in parallel: none of them holds a thread that health needs
    errors = []

    def refused():
        try:
            next(HeldStream(stub).call)
        except grpc.RpcError as exc:
            errors.append(exc.code())

    threads = [threading.Thread(target=refused) for _ in range(20)]
    for t in threads:
        t.start()
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # health answers at once; a full service says it is not ready for more, the server itself is up
        reply = health.Check(health_pb2.HealthCheckRequest(service="lipsync.v1.LipSync"), timeout=ANSWER_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        whole = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=ANSWER_TIMEOUT_S)
        assert whole.status == health_pb2.HealthCheckResponse.SERVING
        assert stub.ListModels(lipsync_pb2.ListModelsRequest(), timeout=ANSWER_TIMEOUT_S).models
    for t in threads:
        t.join()
    assert errors == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 20
    assert capacity.state() == (LIMIT, LIMIT)
    # the original API's streams share the slots
    with grpc.insecure_channel(target) as channel:
        legacy = lipsync_legacy_pb2_grpc.LipSyncServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(legacy.StreamInference(iter([lipsync_legacy_pb2.InferenceRequest(model_name=MODEL, frame_id=0)])))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_client_says_the_service_is_full(full_server):
    target, _, _ = full_server
    with LipSyncClient(target) as client:
        with pytest.raises(ServiceFullError, match="the lip-sync service is full: 2 of 2 streams busy"):
            list(client.render_clip(MODEL, np.zeros((SAMPLE_RATE_HZ, 1), np.float32), SAMPLE_RATE_HZ))
        with pytest.raises(ServiceFullError):
            list(client.stream_audio(MODEL, iter([(np.zeros((640, 1), np.float32), 0.0)]), SAMPLE_RATE_HZ, 1))


def test_slots_come_back_when_streams_end_or_are_cancelled(store, sample_model):
    capacity = Capacity(1)
    server, port = create_server(store=store, generator=make_generator(), capacity=capacity)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = lipsync_pb2_grpc.LipSyncStub(channel)
            held = HeldStream(stub)
            held.first_reply()
            assert capacity.in_use == 1
            held.close()  # the client cancels
            assert wait_until(lambda: capacity.in_use == 0)
        with LipSyncClient(f"127.0.0.1:{port}") as client:
            for _ in range(3):  # one after the other: the one slot is free each time
                assert list(client.render_clip(MODEL, np.zeros((SAMPLE_RATE_HZ // 5, 1), np.float32), SAMPLE_RATE_HZ))
        assert wait_until(lambda: capacity.in_use == 0)
    finally:
        server.stop(grace=None)


def test_a_replica_list_moves_a_refused_call_to_the_next_replica(full_server, store):
    full_target, full_capacity, _ = full_server
    free = CountingGenerator()
    server, port = create_server(store=store, generator=free)
    refusals = []
    original = full_capacity.try_acquire

    def counting_try_acquire():
        ok = original()
        refusals.append(not ok)
        return ok

    full_capacity.try_acquire = counting_try_acquire
    try:
        with LipSyncClient(f"{full_target},127.0.0.1:{port}") as client:
            assert client.replicas == 2
            short = np.zeros((SAMPLE_RATE_HZ // 5, 1), np.float32)
            # round robin only picks connected replicas: until the free one has answered once, both
            # tries of a call may go to the full one
            assert wait_until(lambda: _renders(client, short) or free.rendered > 0)
            refusals.clear()
            for _ in range(20):  # sooner or later a call is sent to the full replica first
                frames = list(client.render_clip(MODEL, short, SAMPLE_RATE_HZ))
                assert [f.index for f in frames] == list(range(len(frames))) and frames
                if any(refusals):
                    break
        assert any(refusals), "no call went to the full replica"
    finally:
        server.stop(grace=None)


def _renders(client: LipSyncClient, samples: np.ndarray) -> bool:
    try:
        return bool(list(client.render_clip(MODEL, samples, SAMPLE_RATE_HZ)))
    except ServiceFullError:
        return False


def test_replica_count():
    assert replica_count("127.0.0.1:1") == 1
    assert replica_count("a:1, b:2,c:3") == 3
    assert replica_count("ipv4:127.0.0.1:1,127.0.0.1:2") == 2
    assert replica_count("dns:///lipsync:5001") >= 2


# --- deadlines and stalled streams ---------------------------------------------------------------

@pytest.fixture()
def slow_server(store, sample_model):
    generator = CountingGenerator(delay_s=SLOW_RENDER_S)
    capacity = Capacity(LIMIT)
    server, port = create_server(store=store, generator=generator, capacity=capacity, stream_idle_s=IDLE_S)
    yield f"127.0.0.1:{port}", generator, capacity
    server.stop(grace=None)


@pytest.fixture(scope="module")
def speech_16k() -> np.ndarray:
    return load_audio(SAMPLE_SPEECH).samples


def test_a_deadline_stops_the_servers_work(slow_server, speech_16k):
    target, generator, capacity = slow_server
    total = frame_count(len(speech_16k), fps=25, sample_rate_hz=SAMPLE_RATE_HZ)
    with LipSyncClient(target) as client:
        with pytest.raises(ServiceError, match="did not answer in time"):
            list(client.render_clip(MODEL, speech_16k, SAMPLE_RATE_HZ, timeout_s=20 * SLOW_RENDER_S))
    assert wait_until(lambda: capacity.in_use == 0)
    settled = generator.rendered
    time.sleep(20 * SLOW_RENDER_S)
    assert generator.rendered == settled, "the server kept rendering past the deadline"
    assert settled < total // 2


def test_a_stalled_stream_is_closed(slow_server):
    target, _, capacity = slow_server
    with grpc.insecure_channel(target) as channel:
        held = HeldStream(lipsync_pb2_grpc.LipSyncStub(channel))
        try:
            with pytest.raises(grpc.RpcError) as info:
                list(held.call)
        finally:
            held.close()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"sent nothing for {IDLE_S:g} s" in info.value.details()
    assert wait_until(lambda: capacity.in_use == 0)


def test_a_stream_that_keeps_sending_is_not_closed(slow_server):
    target, _, _ = slow_server
    chunk = np.zeros((SAMPLE_RATE_HZ // 25, 1), np.float32)

    def paced():  # one frame of audio at a time, each well inside the idle limit, for 4x the limit
        for _ in range(int(4 * IDLE_S * 25)):
            time.sleep(1 / 25)
            yield chunk, 0.0

    with LipSyncClient(target) as client:
        frames = list(client.stream_audio(MODEL, paced(), SAMPLE_RATE_HZ, 1))
    assert len(frames) == int(4 * IDLE_S * 25)


# --- sizes and streamed clips ----------------------------------------------------------------------

def test_a_message_over_the_limit_is_refused(store, sample_model):
    server, port = create_server(store=store, generator=make_generator(), capacity=Capacity(1))
    too_big = np.zeros(MAX_MESSAGE_BYTES // 2 + 1, "<i2").tobytes()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}",
                                   options=[("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)]) as channel:
            stub = lipsync_pb2_grpc.LipSyncStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.RenderClip(lipsync_pb2.ClipRequest(model=MODEL, format=_fmt16(), audio=too_big)))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in info.value.details()
            assert stub.ListModels(lipsync_pb2.ListModelsRequest(), timeout=ANSWER_TIMEOUT_S).models
    finally:
        server.stop(grace=None)


class WindowRecorder:
    """The real generator, keeping the audio window each frame was given."""

    name = "windows"

    def __init__(self):
        self.inner, self.windows = make_generator(), []

    def open_stream(self, model):
        stream, windows = self.inner.open_stream(model), self.windows

        class Recorded:
            def render(self, **kwargs):
                windows.append(kwargs["audio"].copy())
                return stream.render(**kwargs)

        return Recorded()


@pytest.mark.parametrize("chunk", [37, 640, 16_000])
def test_an_offline_stream_gives_the_clips_audio_windows(sample_model, speech_16k, chunk):
    samples = speech_16k[:2 * SAMPLE_RATE_HZ]
    clip = WindowRecorder()
    list(render_clip(sample_model, samples, generator=clip))
    runs = {}
    for offline in (True, False):
        recorder = WindowRecorder()
        engine = LiveEngine(sample_model, recorder, offline=offline)
        frames = [f for i in range(0, len(samples), chunk) for f in engine.push(samples[i:i + chunk])]
        frames += engine.flush()
        assert [f.index for f in frames] == list(range(len(clip.windows)))
        runs[offline] = recorder.windows
    assert all(np.array_equal(a, b) for a, b in zip(runs[True], clip.windows))
    if chunk == 37:
        # live sends a frame as soon as it is decided, before its window is complete when the driver's
        # look-ahead is shorter than half a window: the test can tell the two apart
        assert not all(np.array_equal(a, b) for a, b in zip(runs[False], clip.windows))


@pytest.mark.parametrize("rate_hz", [SAMPLE_RATE_HZ, 48_000])
def test_a_clip_over_the_message_limit_is_streamed_with_the_same_frames(store, sample_model, speech_16k, rate_hz):
    server, port = create_server(store=store, generator=make_generator())
    target = f"127.0.0.1:{port}"
    samples = speech_16k[:3 * SAMPLE_RATE_HZ, None]
    if rate_hz != SAMPLE_RATE_HZ:  # stereo at another rate: the client mixes down and resamples as RenderClip does
        samples = resample(np.hstack([samples, 0.5 * samples]), from_rate_hz=SAMPLE_RATE_HZ, to_rate_hz=rate_hz)
    try:
        with LipSyncClient(target) as whole, LipSyncClient(target, max_clip_bytes=SAMPLE_RATE_HZ) as streamed:
            expected = list(whole.render_clip(MODEL, samples, rate_hz, first_frame=7))
            got = list(streamed.render_clip(MODEL, samples, rate_hz, first_frame=7))
    finally:
        server.stop(grace=None)
    assert len(got) == len(expected) == 75
    for a, b in zip(got, expected):
        assert (a.index, a.model_frame, a.params.shape, a.params.speech) == \
            (b.index, b.model_frame, b.params.shape, b.params.speech)
        assert a.params.open == pytest.approx(b.params.open, abs=1e-6)
        assert np.array_equal(a.bounds, b.bounds) and np.array_equal(a.image, b.image)


def test_a_live_stream_says_service_full_backs_off_and_gets_in_when_a_slot_frees(store, sample_model):
    from lipsync_cli.live.stream import LipStream

    capacity = Capacity(1)
    server, port = create_server(store=store, generator=make_generator(), capacity=capacity)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    held = HeldStream(lipsync_pb2_grpc.LipSyncStub(channel))
    held.first_reply()
    said: list[str] = []
    stop = threading.Event()
    lip = LipStream(f"127.0.0.1:{port}", MODEL, rate_hz=SAMPLE_RATE_HZ, model=sample_model, on_message=said.append)

    def feed() -> None:  # a live client sends audio, silence included, all along
        block, start = np.zeros(SAMPLE_RATE_HZ // 50, np.float32), 0
        while not stop.is_set():
            lip.feed(block, start, time.monotonic())
            start += len(block)
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        with lip:
            feeder.start()
            assert wait_until(lambda: "full" in lip.status), lip.status
            assert not lip.streaming and len([m for m in said if "full" in m]) == 1, said
            held.close()  # a slot frees: the stream gets in on its next try
            assert wait_until(lambda: lip.streaming and lip.status == "", 15.0), (lip.status, said)
    finally:
        stop.set()
        held.close()
        channel.close()
        server.stop(grace=None)
