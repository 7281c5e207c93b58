"""The lip-sync gRPC service (`proto/lipsync.proto`): audio in, one mouth-region JPEG per output frame out.

`create_server` builds a started server with the `LipSync` service, the standard health service and
reflection, so `grpcurl`, load balancers and the tests all talk to the real thing. The service keeps
no state beyond one call and is a thin adapter over `core.engine`: a call decodes and checks its
audio, hands it to `engine.render_clip` (RenderClip) or an `engine.LiveEngine` (StreamAudio) and
sends each `MouthFrame` back through `to_proto` (its image as a JPEG).

Failures become status codes with a one-line message: a bad audio format or bad audio is
INVALID_ARGUMENT, an unknown model NOT_FOUND, a full server RESOURCE_EXHAUSTED, a stream that
sends nothing for `stream_idle_s` DEADLINE_EXCEEDED, anything else INTERNAL (and logged). One bad
request never takes the server down.

Capacity (`rpc.capacity`): RenderClip and StreamAudio each hold a stream slot for their life; when
none is free a call is refused at once. The thread pool has `limits.SPARE_WORKERS` threads more
than there are slots, so health, reflection and ListModels are answered however busy the streams
are. Deadlines: a call past its deadline stops rendering (gRPC answers DEADLINE_EXCEEDED).

Draining (`Capacity.drain`, `serve` on SIGTERM): new calls are refused with UNAVAILABLE and
`limits.draining_message()`, so a client with a list of replicas tries the next; streams still
running at the drain deadline (`Capacity.stop_streams`) end with UNAVAILABLE too, and a client
resumes them elsewhere. The health service says NOT_SERVING for the served names while the
capacity takes no new stream (`rpc.health`). Frames sent and calls that took a slot are counted
in `lipsync_cli.metrics`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import scipy.signal  # noqa: F401  (RenderClip resamples with it: loaded (~0.7 s) with the server, not on a first call)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lipsync_cli import metrics
from lipsync_cli.core import engine
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.generator import MouthGenerator
from lipsync_cli.core.generators import make_generator
from lipsync_cli.core.phones import start_recogniser
from lipsync_cli.core.timing import first_sample_of_frame
from lipsync_cli.errors import AudioError, LipsyncError, ModelNotFoundError, ServiceError, ServiceFullError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, check_samples, pcm_to_float, resample, to_mono
from lipsync_cli.media.models import served_models
from lipsync_cli.media.store import Model, ModelStore
from lipsync_cli.media.video import probe_video
from lipsync_cli.rpc.capacity import Capacity
from lipsync_cli.rpc.health import following_capacity
from lipsync_cli.rpc.limits import (DEFAULT_STREAM_IDLE_S, DRAINING_MESSAGE_PREFIX, MAX_MESSAGE_BYTES, SPARE_WORKERS,
                                    draining_message, stalled_message)
from lipsync_cli.rpc.proto_gen import lipsync_pb2, lipsync_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = lipsync_pb2.DESCRIPTOR.services_by_name["LipSync"].full_name  # "lipsync.v1.LipSync"
MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 192_000
MAX_CHANNELS = 8
SAMPLE_TYPES = {lipsync_pb2.PCM_S16LE: "s16", lipsync_pb2.FLOAT32LE: "f32"}  # proto enum -> audio.pcm_to_float
READ_AHEAD_CHUNKS = 4  # stream messages read ahead of the renderer: more and gRPC's flow control would not hold a fast client back
READ_POLL_S = 0.5  # how often a blocked reader looks whether its stream has ended

# An `extra_servicers` entry registers another service on the server; it may return the full names
# of the services it added, so they are marked SERVING and listed by reflection too.
AddServicer = Callable[[grpc.Server], Iterable[str] | None]


class _InvalidRequest(Exception):
    """The request breaks the protocol (answered with INVALID_ARGUMENT); never leaves this module."""


class _Stalled(Exception):
    """The client sent nothing for too long (answered with DEADLINE_EXCEEDED); never leaves this module."""


class _PastDeadline(Exception):
    """The call's deadline has passed: stop working (answered with DEADLINE_EXCEEDED)."""


class _Stopped(Exception):
    """The server is draining and the stream's deadline came (answered with UNAVAILABLE: resume elsewhere)."""


_END = object()  # the client closed its side of the stream


def _served(frames: Iterable[MouthFrame], call: str, *, share_s: float = 0.0
            ) -> Iterator[lipsync_pb2.MouthFrame]:
    """The replies of `frames`, each counted and timed into the metrics: the time its engine step and
    its JPEG took, plus share_s (a frame's share of work done before, such as a LiveEngine push)."""
    sent, service_time = metrics.FRAMES.labels(call), metrics.FRAME_SECONDS.labels(call)
    frames = iter(frames)
    while True:
        started = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            return
        reply = to_proto(frame)
        service_time.observe(time.perf_counter() - started + share_s)
        sent.inc()
        yield reply


def _expired(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _read_with_idle_limit(requests: Iterator, context: grpc.ServicerContext, idle_s: float) -> Iterator:
    """The messages of `requests`, read in a thread of their own so that a client that sends nothing
    for idle_s (or past the call's deadline) is noticed: _Stalled (_PastDeadline) instead of waiting forever."""
    inbox: queue.Queue = queue.Queue(maxsize=READ_AHEAD_CHUNKS)
    done = threading.Event()

    def put(item) -> None:
        while not done.is_set():
            try:
                inbox.put(item, timeout=READ_POLL_S)
                return
            except queue.Full:
                continue

    def read() -> None:
        try:
            for message in requests:
                put(message)
                if done.is_set():
                    return
            put(_END)
        except Exception as exc:  # the client went away, or the call ended: the handler decides
            put(exc)

    threading.Thread(target=read, name="lipsync-rpc-read", daemon=True).start()
    try:
        while True:
            remaining = context.time_remaining()
            wait_s = idle_s if remaining is None else min(idle_s, max(remaining, 0.0))
            try:
                item = inbox.get(timeout=wait_s)
            except queue.Empty:
                if _expired(context) or not context.is_active():
                    raise _PastDeadline() from None
                raise _Stalled(stalled_message(idle_s)) from None
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        done.set()


@dataclass(frozen=True)
class _Format:
    rate_hz: int
    channels: int
    sample_type: str  # "s16" or "f32"


def _check_format(fmt: lipsync_pb2.AudioFormat) -> _Format:
    if not MIN_RATE_HZ <= fmt.sample_rate_hz <= MAX_RATE_HZ:
        raise _InvalidRequest(
            f"sample rate {fmt.sample_rate_hz} Hz is not supported: use {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz")
    if not 1 <= fmt.channels <= MAX_CHANNELS:
        raise _InvalidRequest(f"{fmt.channels} channels is not supported: use 1 to {MAX_CHANNELS}")
    if fmt.sample_type not in SAMPLE_TYPES:
        known = ", ".join(lipsync_pb2.SampleType.Name(t) for t in SAMPLE_TYPES)
        raise _InvalidRequest(f"sample type {fmt.sample_type} is not supported: use {known}")
    return _Format(fmt.sample_rate_hz, fmt.channels, SAMPLE_TYPES[fmt.sample_type])


def _decode_mono(data: bytes, fmt: _Format) -> np.ndarray:
    """Interleaved PCM bytes -> (n,) float32 mono at the format's rate; refuses NaN/inf."""
    samples = pcm_to_float(data, sample_type=fmt.sample_type, channels=fmt.channels)
    check_samples(samples, what="the audio")
    return to_mono(samples)


def to_proto(frame: MouthFrame) -> lipsync_pb2.MouthFrame:
    """The reply of one engine frame (its image as `engine.mouth_jpeg`): the one place a MouthFrame becomes
    protobuf. Of the driver's parameters the wire carries open, shape and speech."""
    return lipsync_pb2.MouthFrame(
        index=frame.index, prediction_data=engine.mouth_jpeg(frame), bounds=[float(v) for v in frame.bounds],
        speech=frame.speech, model_frame=frame.model_frame, mouth_open=frame.params.open, shape=frame.params.shape,
        captured_at_s=frame.captured_at_s)


class LipSyncServicer(lipsync_pb2_grpc.LipSyncServicer):
    """The `lipsync.v1.LipSync` service over a model store and one mouth generator."""

    def __init__(self, store: ModelStore, generator: MouthGenerator, *, capacity: Capacity | None = None,
                 stream_idle_s: float = DEFAULT_STREAM_IDLE_S, warm_recogniser: bool = True):
        self.store, self.generator = store, generator
        self.capacity = capacity if capacity is not None else Capacity()
        self.stream_idle_s = stream_idle_s
        # each render's phones find their process started (`core.phones`): the first one's now, the next
        # one's as a render begins; an embedded service, there for one render, leaves that to its caller
        self.warm_recogniser = warm_recogniser
        if warm_recogniser:
            start_recogniser()

    def RenderClip(self, request: lipsync_pb2.ClipRequest, context: grpc.ServicerContext
                   ) -> Iterator[lipsync_pb2.MouthFrame]:
        """One reply per output frame of the whole clip, in order."""
        with _status_from_errors(context, "RenderClip"), self.capacity.slot():
            metrics.STREAMS.labels("lipsync", "RenderClip").inc()
            fmt = _check_format(request.format)
            if not request.audio:
                raise _InvalidRequest("the request holds no audio")
            mono = resample(_decode_mono(request.audio, fmt), from_rate_hz=fmt.rate_hz, to_rate_hz=SAMPLE_RATE_HZ)
            model = self._model(request.model)
            frame_samples = first_sample_of_frame(1, fps=model.fps, sample_rate_hz=SAMPLE_RATE_HZ)
            if len(mono) < frame_samples:
                raise _InvalidRequest(
                    f"{1000 * len(mono) / SAMPLE_RATE_HZ:.1f} ms of audio is shorter than one video frame "
                    f"({1000 / float(model.fps):.1f} ms at {float(model.fps):g} fps)")
            frames = engine.render_clip(model, mono, generator=self.generator, first_frame=request.first_frame)
            if self.warm_recogniser:
                start_recogniser()
            for i, reply in enumerate(_served(frames, "RenderClip")):
                self._check_going(context)
                if not context.is_active():
                    log.info("RenderClip: the client went away after %d frames; stopping", i)
                    return
                yield reply

    def StreamAudio(self, request_iterator: Iterator[lipsync_pb2.AudioChunk], context: grpc.ServicerContext
                    ) -> Iterator[lipsync_pb2.MouthFrame]:
        """A reply per output frame as soon as the driver has decided it (offline: its whole audio window)."""
        with _status_from_errors(context, "StreamAudio"), self.capacity.slot():
            metrics.STREAMS.labels("lipsync", "StreamAudio").inc()
            request_iterator = _read_with_idle_limit(request_iterator, context, self.stream_idle_s)
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("body") != "start":
                raise _InvalidRequest("the first message of a stream must be a StreamStart naming the model "
                                      "and the audio format")
            fmt = _check_format(first.start.format)
            model = self._model(first.start.model)
            live = engine.LiveEngine(model, self.generator, sample_rate_hz=fmt.rate_hz,
                                     first_frame=first.start.first_frame, offline=first.start.offline)
            captured_at_s = first.captured_at_s
            for chunk in request_iterator:
                if chunk.WhichOneof("body") != "audio":
                    raise _InvalidRequest("only the first message of a stream may be a StreamStart")
                captured_at_s = chunk.captured_at_s
                started = time.perf_counter()
                frames = live.push(_decode_mono(chunk.audio, fmt), captured_at_s)
                # the push decided every frame it returns: each carries an equal share of its time
                share_s = (time.perf_counter() - started) / max(1, len(frames))
                for reply in _served(frames, "StreamAudio", share_s=share_s):
                    self._check_going(context)
                    if not context.is_active():
                        return
                    yield reply
                self._check_going(context)  # a stream between frames (live silence) stops at the deadline too
            for reply in _served(live.flush(captured_at_s), "StreamAudio"):
                if not context.is_active():
                    return
                yield reply

    def _check_going(self, context: grpc.ServicerContext) -> None:
        """Raise when this stream must stop: its deadline passed, or the draining server's has."""
        if _expired(context):
            raise _PastDeadline()
        if self.capacity.stopping:
            raise _Stopped(draining_message(stopped=True))

    def ListModels(self, request: lipsync_pb2.ListModelsRequest, context: grpc.ServicerContext
                   ) -> lipsync_pb2.ListModelsResponse:
        """Every model video this service can serve by name."""
        with _status_from_errors(context, "ListModels"):
            videos = served_models(models_dir=self.store.models_dir)
            return lipsync_pb2.ListModelsResponse(models=[self._model_info(n, v) for n, v in videos.items()])

    def _model(self, name: str) -> Model:
        if not name:
            raise _InvalidRequest("the request names no model (ListModels lists them)")
        try:
            return self.store.get(name, names_only=True)
        except ModelNotFoundError as exc:
            log.info("unknown model requested: %s", exc)
            # the store's message lists the folders searched: no business of a remote client
            raise ModelNotFoundError(f"no model named {name!r} on this server (ListModels lists them)") from exc

    def _model_info(self, name: str, video: Path) -> lipsync_pb2.ModelInfo:
        info = lipsync_pb2.ModelInfo(name=name, prepared=self.store.is_prepared(video))
        try:
            probe = probe_video(video)
        except LipsyncError as exc:
            log.warning("model %s cannot be read: %s", info.name, exc)
            return info
        info.width, info.height, info.fps, info.frames = probe.width, probe.height, float(probe.fps), probe.n_frames
        return info


@contextmanager
def _status_from_errors(context: grpc.ServicerContext, rpc: str) -> Iterator[None]:
    """Answer a failed call with its status code and a one-line message, never crash the server."""
    try:
        yield
    except (_InvalidRequest, AudioError) as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except ModelNotFoundError as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except ServiceFullError as exc:
        log.info("%s refused: %s", rpc, exc)
        # draining is not "full": UNAVAILABLE, the code after which every client tries another replica
        draining = str(exc).startswith(DRAINING_MESSAGE_PREFIX)
        context.abort(grpc.StatusCode.UNAVAILABLE if draining else grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except _Stopped as exc:
        log.info("%s: %s", rpc, exc)
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    except _Stalled as exc:
        log.info("%s: %s", rpc, exc)
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    except _PastDeadline:
        # stopped: said as an error, so that a client never takes the frames so far for the whole clip
        log.info("%s: the deadline passed; stopped", rpc)
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{rpc}: the call's deadline passed")
    except LipsyncError as exc:
        log.error("%s failed: %s", rpc, exc)
        context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {exc}")
    except Exception as exc:
        if not context.is_active():
            # a cancelled client makes reading its requests raise: nothing is wrong on this side
            log.info("%s: the client went away", rpc)
            return
        log.exception("%s failed unexpectedly", rpc)
        context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed unexpectedly: {type(exc).__name__}: {exc}")


def create_server(address: str = "127.0.0.1:0", *, store: ModelStore, generator: MouthGenerator | None = None,
                  capacity: Capacity | None = None, stream_idle_s: float = DEFAULT_STREAM_IDLE_S,
                  extra_servicers: Iterable[AddServicer] = (), warm_recogniser: bool = True
                  ) -> tuple[grpc.Server, int]:
    """A started gRPC server with the LipSync, health and reflection services; returns it and its port.

    address: "host:port"; port 0 picks a free one. generator: the mouth generator (default: the
    avatar's own mouth). capacity: the stream slots RenderClip and StreamAudio share (default:
    `Capacity()`, `limits.default_max_streams()` of them); pass the same one to the other stream
    endpoints of the process and read its `state()` for readiness. stream_idle_s: a stream that
    sends nothing for this long is closed. The pool has capacity.limit + SPARE_WORKERS threads, so
    health, reflection and ListModels always find one. extra_servicers: callables `add(server)`
    that register more services (for example the original system's API); each may return the full
    names of what it added, for health and reflection. warm_recogniser: keep a phone recogniser
    process started for the next render (False: a service for one render, whose caller starts it).
    """
    generator = generator if generator is not None else make_generator()
    capacity = capacity if capacity is not None else Capacity()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=capacity.limit + SPARE_WORKERS, thread_name_prefix="lipsync-rpc"),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 # on by default on Linux: a second server on a busy port would bind silently and
                 # take a share of the calls; off, binding fails and says so
                 ("grpc.so_reuseport", 0)])
    servicer = LipSyncServicer(store, generator, capacity=capacity, stream_idle_s=stream_idle_s,
                               warm_recogniser=warm_recogniser)
    lipsync_pb2_grpc.add_LipSyncServicer_to_server(servicer, server)
    names = [SERVICE_NAME]
    for add in extra_servicers:
        names.extend(add(server) or ())

    health_pb2_grpc.add_HealthServicer_to_server(following_capacity(names, capacity), server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection([*names, health_name, reflection.SERVICE_NAME], server)

    # gRPC says no more than "Failed to bind" (the cause only goes to its debug log)
    refused = (f"cannot listen on {address}: the port is in use (by another `lipsync serve`?) or the host is "
               "not an address of this machine; pick another port or host")
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServiceError(refused) from exc
    if port == 0:
        raise ServiceError(refused)
    server.start()
    log.info("lip-sync service listening on %s (port %d)", address, port)
    return server, port
