"""The client of the lip-sync gRPC service.

`LipSyncClient` talks to one server or balances round-robin over several replicas; every gRPC
failure leaves it as a `LipsyncError` with one line a user can act on. Frames come back as the
core's own `engine.MouthFrame` (the JPEG decoded), so callers never see protobuf. The in-process
service (`lipsync render` without `--server`) is `rpc.embedded`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterator

import cv2
import grpc
import numpy as np

from lipsync_cli.core.driver import MouthParams
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.errors import AudioError, LipsyncError, ModelNotFoundError, ServiceError
from lipsync_cli.media.audio import float_to_pcm16
from lipsync_cli.rpc.limits import MAX_MESSAGE_BYTES
from lipsync_cli.rpc.proto_gen import lipsync_pb2, lipsync_pb2_grpc

log = logging.getLogger(__name__)

REQUEST_OVERHEAD_BYTES = 1024  # model name, format and framing around a clip's audio
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


def _decode_image(jpeg: bytes) -> np.ndarray | None:
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
    return MouthFrame(index=reply.index, model_frame=reply.model_frame, image=_decode_image(reply.prediction_data),
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

    def __init__(self, target: str):
        self.target = target
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

    def render_clip(self, model: str, samples: np.ndarray, sample_rate_hz: int, first_frame: int = 0
                    ) -> Iterator[MouthFrame]:
        """The mouth frames of a whole clip, in order (as `engine.render_clip` gives them, images via JPEG).

        samples: (n,) or (n, channels) float32 in [-1, 1] at sample_rate_hz (sent as PCM16).
        first_frame: where in the model video's ping-pong loop the clip starts.
        """
        data, channels = float_to_pcm16(samples)
        if len(data) > MAX_MESSAGE_BYTES - REQUEST_OVERHEAD_BYTES:
            seconds = MAX_MESSAGE_BYTES // (2 * channels * sample_rate_hz)
            raise AudioError(f"the clip is too long for one request: at most about {seconds} s at "
                             f"{sample_rate_hz} Hz with {channels} channels; split it")
        request = lipsync_pb2.ClipRequest(model=model, audio=data, first_frame=first_frame,
                                          format=_pcm16_format(sample_rate_hz, channels))
        yield from self._frames(self._stub.RenderClip(request))

    def stream_audio(self, model: str, chunks: Iterator[tuple[np.ndarray, float]], sample_rate_hz: int,
                     channels: int, first_frame: int = 0) -> Iterator[MouthFrame]:
        """Live: mouth frames as soon as the service has decided them (as `engine.LiveEngine` gives them).

        chunks: (samples, captured_at_s) pairs; samples (n,) or (n, channels) float32 in [-1, 1] at
        sample_rate_hz, captured_at_s the client's monotonic clock when they were captured (echoed
        back in the frames they complete, for latency). The stream ends when `chunks` does.
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
            yield from self._frames(self._stub.StreamAudio(requests()))
        except ServiceError:
            if failure:
                raise failure[0] from None
            raise

    def list_models(self) -> list[lipsync_pb2.ModelInfo]:
        """The models the service can serve."""
        try:
            return list(self._stub.ListModels(lipsync_pb2.ListModelsRequest()).models)
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
        if code == grpc.StatusCode.UNAVAILABLE:
            if started:
                return ServiceError(f"the lip-sync service at {self.target} went away mid-render")
            return ServiceError(self._unavailable_message())
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServiceError(f"the lip-sync service at {self.target} did not answer in time")
        if code == grpc.StatusCode.CANCELLED:
            return ServiceError(f"the call to the lip-sync service at {self.target} was cancelled")
        log.debug("lip-sync call failed: %s %s", code, details)
        return ServiceError(f"the lip-sync service at {self.target} failed: {details} ({code.name})")

