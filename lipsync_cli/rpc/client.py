"""The client of the lip-sync gRPC service.

`LipSyncClient` talks to one server or balances round-robin over several replicas; every gRPC
failure leaves it as a `LipsyncError` with one line a user can act on. With a list of replicas,
a call refused because a server is full (`ServiceFullError`) is tried on the next, and a render
whose server goes away mid-clip carries on from the frame it had reached on another. A clip
longer than one message holds (`limits.MAX_MESSAGE_BYTES`) is streamed, transparently. Frames come back as the
core's own `engine.MouthFrame` (the JPEG decoded), so callers never see protobuf. The in-process
service (`lipsync render` without `--server`) is `rpc.embedded`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterator
from fractions import Fraction

import cv2
import grpc
import numpy as np

from lipsync_cli.core.driver import MouthParams
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.timing import frame_count
from lipsync_cli.errors import AudioError, LipsyncError, ModelNotFoundError, ServiceError, ServiceFullError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, float_to_pcm16, pcm_to_float, resample, to_mono
from lipsync_cli.rpc.limits import (DRAINING_MESSAGE_PREFIX, FULL_MESSAGE_PREFIX, MAX_MESSAGE_BYTES,
                                    REQUEST_OVERHEAD_BYTES, STALLED_MESSAGE_PREFIX, STREAM_CHUNK_SAMPLES)
from lipsync_cli.rpc.proto_gen import lipsync_pb2, lipsync_pb2_grpc

log = logging.getLogger(__name__)

LIST_TIMEOUT_S = 10.0  # ListModels answers at once however busy a server is
DNS_ATTEMPTS = 3  # tries of a call on a dns:/// target, whose replicas are not counted here
RETRY_BACKOFF_S = 0.2  # before the first retry of a refused or failed call; doubled for each next
FPS_DENOMINATOR_LIMIT = 1001  # ListModels' fps (a double) back to an exact rate: 30000/1001
# gRPC name-resolver schemes a target may start with; anything else is host:port[,host:port...]
TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")
MIN_IMAGE_PX = 16  # a decoded mouth image smaller than this (or not square) is damaged: None
CLOSED_SHAPE = "A"  # the Rhubarb letter of lips pressed together (driver.MouthParams.shape)


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")  # an IPv6 literal is written [::1]:port
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServiceError(f"{address!r} is not HOST:PORT (for example 127.0.0.1:50051)")
    return host, int(port)


def _resolve(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ServiceError(f"cannot resolve the host {host!r} ({exc})") from exc
    # prefer IPv4, so a list of names that all resolve to both families ends up in one family
    addresses = sorted((ipaddress.ip_address(info[4][0]) for info in infos), key=lambda a: a.version)
    return addresses[0]


def channel_target(target: str) -> str:
    """The gRPC target for `host:port`, `host:port,host:port,...` (balanced) or a `dns:///name:port` target.

    A list becomes one `ipv4:` (or `ipv6:`) target with every address, so the channel's
    round-robin policy spreads calls over all of them.
    """
    target = target.strip()
    if target.startswith(TARGET_SCHEMES):
        return target
    parts = [p for p in target.split(",") if p.strip()]
    if len(parts) == 1:
        _split_host_port(parts[0])
        return parts[0].strip()
    pairs = [_split_host_port(p) for p in parts]
    addresses = [(_resolve(host, port), port) for host, port in pairs]
    versions = {a.version for a, _ in addresses}
    if len(versions) > 1:
        raise ServiceError(f"{target}: list servers of one address family (all IPv4 or all IPv6)")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{a}:{port}" for a, port in addresses)
    return "ipv6:" + ",".join(f"[{a}]:{port}" for a, port in addresses)


def replica_count(target: str) -> int:
    """How many replicas a target names: the tries a refused call gets (DNS_ATTEMPTS for dns:///)."""
    target = target.strip()
    if target.startswith("dns:"):
        return DNS_ATTEMPTS
    if target.startswith(("ipv4:", "ipv6:")):
        target = target.split(":", 1)[1]
    return max(1, len([p for p in target.split(",") if p.strip()]))


def _as_sent_16k(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """What RenderClip makes of `samples` (PCM16, mono, resampled): (n,) float32 at SAMPLE_RATE_HZ."""
    data, channels = float_to_pcm16(samples)
    mono = to_mono(pcm_to_float(data, sample_type="s16", channels=channels))
    return resample(mono, from_rate_hz=sample_rate_hz, to_rate_hz=SAMPLE_RATE_HZ)


def decode_image(jpeg: bytes) -> np.ndarray | None:
    """A reply's mouth JPEG as (S, S, 3) uint8 BGR; None when missing or not a square image >= MIN_IMAGE_PX."""
    if not jpeg:
        return None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape[0] != image.shape[1] or image.shape[0] < MIN_IMAGE_PX:
        return None
    return image


def from_proto(reply: lipsync_pb2.MouthFrame) -> MouthFrame:
    """The core's MouthFrame of one reply.

    The wire carries only open, shape and speech of the driver's parameters: wide and round come
    back 0.0 and closed is rebuilt from the shape. bounds: (4,) float64, as sent (any length a
    damaged reply has; the compositor refuses what is not 4 finite numbers).
    """
    params = MouthParams(open=reply.mouth_open, wide=0.0, round=0.0, closed=reply.shape == CLOSED_SHAPE,
                         speech=reply.speech, shape=reply.shape)
    return MouthFrame(index=reply.index, model_frame=reply.model_frame, image=decode_image(reply.prediction_data),
                      bounds=np.asarray(reply.bounds, np.float64), params=params,
                      captured_at_s=reply.captured_at_s)


def _pcm16_format(sample_rate_hz: int, channels: int) -> lipsync_pb2.AudioFormat:
    return lipsync_pb2.AudioFormat(sample_rate_hz=sample_rate_hz, channels=channels,
                                   sample_type=lipsync_pb2.PCM_S16LE)


class LipSyncClient:
    """A client of the lip-sync service.

    target: "host:port", a comma-separated list of host:port (calls are spread round-robin over
    them) or a gRPC target such as "dns:///name:port" (round-robin over every address of the name).
    """

    def __init__(self, target: str, *, max_clip_bytes: int = MAX_MESSAGE_BYTES - REQUEST_OVERHEAD_BYTES):
        """max_clip_bytes: the most PCM16 audio sent in one RenderClip request; longer clips are streamed."""
        self.target = target
        self.replicas = replica_count(target)
        self.max_clip_bytes = max_clip_bytes
        self._channel = grpc.insecure_channel(channel_target(target), options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._stub = lipsync_pb2_grpc.LipSyncStub(self._channel)

    def __enter__(self) -> LipSyncClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (calls still running are cancelled)."""
        self._channel.close()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until a server answers; ServiceError when none does within timeout_s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise ServiceError(self._unavailable_message()) from exc

    def render_clip(self, model: str, samples: np.ndarray, sample_rate_hz: int, first_frame: int = 0, *,
                    timeout_s: float | None = None) -> Iterator[MouthFrame]:
        """The mouth frames of a whole clip, in order (as `engine.render_clip` gives them, images via JPEG).

        samples: (n,) or (n, channels) float32 in [-1, 1] at sample_rate_hz (sent as PCM16), any
        length: a clip over max_clip_bytes is streamed (StreamAudio, offline: the same frames).
        first_frame: where in the model video's ping-pong loop the clip starts. timeout_s: the
        deadline of the whole render. With a replica list, a full server's refusal is tried on the
        next replica, and a server that goes away mid-clip is replaced by another from the frame
        reached (that frame's driver state starts afresh: the mouth may differ for a few frames).
        """
        data, channels = float_to_pcm16(samples)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        mono16: np.ndarray | None = None  # the clip as the service sees it, once streamed or resumed
        total: int | None = None  # frames of the whole clip, known once resumed
        done = tries = 0
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if done == 0 and len(data) <= self.max_clip_bytes:
                request = lipsync_pb2.ClipRequest(model=model, audio=data, first_frame=first_frame,
                                                  format=_pcm16_format(sample_rate_hz, channels))
                call = self._stub.RenderClip(request, timeout=timeout)
                offset = 0
            else:
                mono16 = _as_sent_16k(samples, sample_rate_hz) if mono16 is None else mono16
                offset = 0
                if done:
                    fps = self._model_fps(model)
                    total = frame_count(len(mono16), fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)
                    # the sample frame `done` starts at, rounded down: the call gives >= total - done frames
                    offset = done * fps.denominator * SAMPLE_RATE_HZ // fps.numerator
                call = self._stub.StreamAudio(self._clip_chunks(model, mono16[offset:], first_frame + done),
                                              timeout=timeout)
            base, got = done, 0
            try:
                for reply in call:
                    if total is not None and done >= total:
                        break
                    frame = from_proto(reply)
                    got += 1
                    yield _renumbered(frame, base) if base else frame
                    done += 1
                return
            except grpc.RpcError as exc:
                error = self._error(exc, started=done > 0)
                retry = self._retryable(exc, got_frames=got > 0)
                tries = 1 if got else tries + 1
                # a replica that just went away may be picked once more before the channel notices
                most = self.replicas + (exc.code() == grpc.StatusCode.UNAVAILABLE)
                if not retry or tries >= most or (deadline is not None and time.monotonic() >= deadline):
                    raise error from exc
                log.info("lip-sync call to %s failed after %d frames (%s); trying another replica", self.target,
                         done, exc.code().name)
                time.sleep(RETRY_BACKOFF_S * 2 ** (tries - 1))
            finally:
                call.cancel()

    def _retryable(self, exc: grpc.RpcError, *, got_frames: bool) -> bool:
        """Whether another replica may take the call: one was full, or went away (mid-clip too)."""
        if self.replicas < 2:
            return False
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return (exc.details() or "").startswith(FULL_MESSAGE_PREFIX) and not got_frames
        return exc.code() == grpc.StatusCode.UNAVAILABLE

    def _model_fps(self, model: str) -> Fraction:
        for info in self.list_models():
            if info.name == model and info.fps > 0:
                return Fraction(info.fps).limit_denominator(FPS_DENOMINATOR_LIMIT)
        raise ServiceError(f"the lip-sync service at {self.target} went away mid-render and the other replicas "
                           f"do not list the model {model!r}")

    @staticmethod
    def _clip_chunks(model: str, mono16: np.ndarray, first_frame: int) -> Iterator[lipsync_pb2.AudioChunk]:
        """A streamed render: StreamStart (offline), then the clip in STREAM_CHUNK_SAMPLES chunks of float32."""
        fmt = lipsync_pb2.AudioFormat(sample_rate_hz=SAMPLE_RATE_HZ, channels=1, sample_type=lipsync_pb2.FLOAT32LE)
        yield lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=model, format=fmt, first_frame=first_frame,
                                                                   offline=True))
        for i in range(0, len(mono16), STREAM_CHUNK_SAMPLES):
            yield lipsync_pb2.AudioChunk(audio=mono16[i:i + STREAM_CHUNK_SAMPLES].astype("<f4").tobytes())

    def stream_audio(self, model: str, chunks: Iterator[tuple[np.ndarray, float]], sample_rate_hz: int,
                     channels: int, first_frame: int = 0, *, timeout_s: float | None = None) -> Iterator[MouthFrame]:
        """Live: mouth frames as soon as the service has decided them (as `engine.LiveEngine` gives them).

        chunks: (samples, captured_at_s) pairs; samples (n,) or (n, channels) float32 in [-1, 1] at
        sample_rate_hz, captured_at_s the client's monotonic clock when they were captured (echoed
        back in the frames they complete, for latency). The stream ends when `chunks` does.
        timeout_s: the deadline of the whole stream (None: none). A full server raises
        ServiceFullError at once, and so does a draining one (the caller retries with a backoff; a
        new call goes to the next replica); a stream a draining server stops at its deadline raises
        ServiceError (reconnect: another replica takes it). The server closes a stream that sends
        nothing for 30 s: send silence too.
        """
        # gRPC reads `requests` in its own thread and only cancels the call when it raises: keep the error
        failure: list[Exception] = []

        def requests() -> Iterator[lipsync_pb2.AudioChunk]:
            yield lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(
                model=model, first_frame=first_frame, format=_pcm16_format(sample_rate_hz, channels)))
            try:
                for samples, captured_at_s in chunks:
                    pcm = float_to_pcm16(samples, channels)[0]
                    yield lipsync_pb2.AudioChunk(audio=pcm, captured_at_s=captured_at_s)
            except Exception as exc:
                failure.append(exc)
                raise

        try:
            yield from self._frames(self._stub.StreamAudio(requests(), timeout=timeout_s))
        except ServiceError:
            if failure:
                raise failure[0] from None
            raise

    def list_models(self, timeout_s: float = LIST_TIMEOUT_S) -> list[lipsync_pb2.ModelInfo]:
        """The models the service can serve."""
        try:
            return list(self._stub.ListModels(lipsync_pb2.ListModelsRequest(), timeout=timeout_s).models)
        except grpc.RpcError as exc:
            raise self._error(exc, started=False) from exc

    def _frames(self, call) -> Iterator[MouthFrame]:
        """Yield the frames of a streaming call, mapping its errors; cancels it when the caller stops early."""
        started = False
        try:
            for reply in call:
                started = True
                yield from_proto(reply)
        except grpc.RpcError as exc:
            raise self._error(exc, started=started) from exc
        finally:
            call.cancel()  # no-op when the call has finished

    def _unavailable_message(self) -> str:
        return f"nothing answers at {self.target}: start `lipsync serve` there or leave out --server"

    def _error(self, exc: grpc.RpcError, *, started: bool) -> LipsyncError:
        """The project error for a failed call; `started`: frames had arrived before it failed."""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotFoundError(details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return AudioError(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith(FULL_MESSAGE_PREFIX):
            return ServiceFullError(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # gRPC's own size limit
            return ServiceError(f"the lip-sync service at {self.target} refused a message: {details} (the limit is "
                                f"{MAX_MESSAGE_BYTES // (1024 * 1024)} MiB)")
        if code == grpc.StatusCode.UNAVAILABLE and details.startswith(DRAINING_MESSAGE_PREFIX):
            # a replica shutting down: refused a new call (full, in effect), or stopped one at its deadline
            error = ServiceError if started else ServiceFullError
            return error(f"the lip-sync service at {self.target}: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:
            if started:
                return ServiceError(f"the lip-sync service at {self.target} went away mid-render")
            return ServiceError(self._unavailable_message())
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if details.startswith(STALLED_MESSAGE_PREFIX):  # the server closed a stream that sent nothing
                return ServiceError(f"the lip-sync service at {self.target}: {details}")
            return ServiceError(f"the lip-sync service at {self.target} did not answer in time")
        if code == grpc.StatusCode.CANCELLED:
            return ServiceError(f"the call to the lip-sync service at {self.target} was cancelled")
        log.debug("lip-sync call failed: %s %s", code, details)
        return ServiceError(f"the lip-sync service at {self.target} failed: {details} ({code.name})")


def _renumbered(frame: MouthFrame, done: int) -> MouthFrame:
    """A frame of a resumed call as the frame of the whole clip it is: index + done."""
    return MouthFrame(index=frame.index + done, model_frame=frame.model_frame, image=frame.image,
                      bounds=frame.bounds, params=frame.params, captured_at_s=frame.captured_at_s)
