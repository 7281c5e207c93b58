"""The original system's lip-sync API (`proto/lipsync_legacy.proto`, `lipsyncsrv.LipSyncService`).

Served on the same gRPC server as `lipsync.v1.LipSync`, so the original clients only change the
address they call:

    generator = make_generator()
    create_server(address, store=store, generator=generator,
                  extra_servicers=[add_legacy_service(store, generator)])

A request names a model frame, `frame_id`, which is also the time in the audio (frame_id / fps
seconds); past the end of the model video the frames play back and forth, as in `render`. The
audio comes as a base64 WAV file with every request; it is decoded once and kept by its hash.
The default generator carries state from frame to frame (it continues its last source mouth), so
the frames of one audio on one model are rendered in order through one generator stream, the way
RenderClip renders them, and kept: a request for frame i answers with exactly RenderClip's frame i
(first_frame 0), whatever order the requests come in. Frames with no audio, or past its end, show
the mouth at rest.

The original API reports failures in the reply (success = false, error set), never as a gRPC
status: one bad request gets one failed reply, and a stream or batch goes on with the next. The
one exception is capacity: a StreamInference holds one of the server's stream slots (the
`capacity` given to `add_legacy_service`) and is refused with RESOURCE_EXHAUSTED when none is free
(UNAVAILABLE while the server drains). Frames answered are counted in `lipsync_cli.metrics`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from cachetools import LRUCache

from lipsync_cli import metrics
from lipsync_cli.core.driver import REST, MouthParams, drive
from lipsync_cli.core.engine import MouthFrame, frames_for, mouth_jpeg
from lipsync_cli.core.generator import MouthGenerator
from lipsync_cli.core.timing import ping_pong
from lipsync_cli.errors import AudioError, LipsyncError, ModelNotFoundError
from lipsync_cli.media.audio import clip_from_samples
from lipsync_cli.media.cache import REGION_PX
from lipsync_cli.media.models import VIDEO_SUFFIXES
from lipsync_cli.media.store import Model, ModelStore
from lipsync_cli.rpc.capacity import Capacity
from lipsync_cli.rpc.limits import DRAINING_MESSAGE_PREFIX
from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2, lipsync_legacy_pb2_grpc
from lipsync_cli.rpc.service import AddServicer

log = logging.getLogger(__name__)

SERVICE_NAME = lipsync_legacy_pb2.DESCRIPTOR.services_by_name["LipSyncService"].full_name  # "lipsyncsrv.LipSyncService"
PREDICTION_SHAPE = f"{REGION_PX}x{REGION_PX}x3"  # what the original API calls the JPEG's size
AUDIO_CACHE_CLIPS = 8  # decoded WAVs kept
# rendered clips kept; a minute of audio at 25 fps is about 45 MB of JPEGs
CLIP_CACHE_CLIPS = 4
# rest mouths kept, one per model frame: JPEGs of some 30 KB, so about 8 MB
REST_CACHE_FRAMES = 256
NO_AUDIO = np.zeros(0, dtype=np.float32)


class _BadRequest(Exception):
    """The request cannot be answered as asked (a failed reply); never leaves this module."""


@dataclass(frozen=True)
class _Mouth:
    """What a reply of the original API carries of one frame, encoded once and kept."""

    jpeg: bytes  # the mouth image as RenderClip sends it (`engine.mouth_jpeg`)
    bounds: tuple[float, ...]  # [xmin, ymin, xmax, ymax], full-frame pixels of its model frame

    @classmethod
    def of(cls, frame: MouthFrame) -> _Mouth:
        return cls(mouth_jpeg(frame), tuple(float(v) for v in frame.bounds))


def decode_wav_base64(text: str) -> np.ndarray:
    """A base64 audio file (the original API's audio_override) -> (n,) float32 mono at SAMPLE_RATE_HZ.

    Decoded exactly as RenderClip decodes the same samples sent as PCM. Raises AudioError for text
    that is not base64, empty, not an audio file, or holding NaN.
    """
    import soundfile as sf

    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise AudioError(f"audio_override is not base64 ({exc}): send the WAV file's bytes base64-encoded") from exc
    if not data:
        raise AudioError("audio_override is empty: send a base64 WAV file, or leave the field out for a mouth at rest")
    try:
        samples, rate_hz = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:  # LibsndfileError is a RuntimeError
        raise AudioError(f"audio_override is not a readable audio file ({exc}): send a WAV file") from exc
    return clip_from_samples(samples, int(rate_hz), what="audio_override").samples


class AudioCache:
    """Decoded audio_override WAVs by the hash of their base64 text, least recently used dropped first.

    A client of the original API sends the same audio with every frame: it is decoded once.
    """

    def __init__(self, limit: int = AUDIO_CACHE_CLIPS):
        self.limit = limit
        self.decodes = 0  # WAVs decoded so far, hits not counted
        self._samples: LRUCache[str, np.ndarray] = LRUCache(maxsize=limit)
        self._lock = threading.Lock()  # LRUCache is not thread-safe (a lookup reorders it)

    def get(self, text: str) -> tuple[str, np.ndarray]:
        """(key, samples) of a base64 WAV: the key names this audio; samples as `decode_wav_base64`."""
        key = hashlib.sha256(text.encode()).hexdigest()
        # decoding under the lock: requests that bring the same new audio at once wait for one decode
        with self._lock:
            samples = self._samples.get(key)
            if samples is None:
                samples = decode_wav_base64(text)
                self.decodes += 1
                self._samples[key] = samples
            return key, samples


class _Clip:
    """The frames of one audio on one model, rendered in order through one generator stream, on demand.

    Creating one is cheap: the mouth driver runs over the audio on the first `frame` call, under
    this clip's own lock, so it holds up only the requests for this clip.
    """

    def __init__(self, model: Model, generator: MouthGenerator, mono: np.ndarray):
        self.model, self.generator, self.mono = model, generator, mono
        self.params: list[MouthParams] | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        self._rendered: list[_Mouth] = []
        self._frames = frames_for(self.model, self.generator, self.params, self.mono)

    def frame(self, index: int) -> _Mouth | None:
        """Frame `index`, rendering the frames before it first where not done yet; None past the clip's end."""
        with self._lock:
            if self.params is None:
                self.params = drive(self.mono, fps=self.model.fps, phonetic=True)
                self._start()
            if index >= len(self.params):
                return None
            try:
                while len(self._rendered) <= index:
                    self._rendered.append(_Mouth.of(next(self._frames)))
            except Exception:
                # the stream stopped half-way: the next request renders the clip afresh
                self._start()
                raise
            return self._rendered[index]


class ClipCache:
    """Rendered clips by (model, audio key), least recently used dropped first."""

    def __init__(self, generator: MouthGenerator, limit: int = CLIP_CACHE_CLIPS):
        self.generator, self.limit = generator, limit
        self._clips: LRUCache[tuple[Model, str], _Clip] = LRUCache(maxsize=limit)
        self._lock = threading.Lock()  # LRUCache is not thread-safe (a lookup reorders it)

    def get(self, model: Model, audio_key: str, mono: np.ndarray) -> _Clip:
        """The clip of this audio on this model (a reloaded model is a new one); not rendered yet if new."""
        key = (model, audio_key)
        with self._lock:
            clip = self._clips.get(key)
            if clip is None:
                clip = self._clips[key] = _Clip(model, self.generator, mono)
            return clip


class LegacyLipSyncServicer(lipsync_legacy_pb2_grpc.LipSyncServiceServicer):
    """`lipsyncsrv.LipSyncService` over a model store and the same mouth generator as LipSync."""

    def __init__(self, store: ModelStore, generator: MouthGenerator, capacity: Capacity | None = None):
        self.store, self.generator = store, generator
        self.capacity = capacity if capacity is not None else Capacity()
        self.audio = AudioCache()
        self.clips = ClipCache(generator)
        # the rest mouth of a model frame is the same for every request: rendered and encoded once.
        # Keyed by the video, not the Model, so that it keeps no model the store has dropped alive.
        self._rest: LRUCache[tuple[Path, tuple[int, int], int], _Mouth] = LRUCache(maxsize=REST_CACHE_FRAMES)
        self._rest_lock = threading.Lock()  # LRUCache is not thread-safe (a lookup reorders it)

    def add_to(self, server: grpc.Server) -> list[str]:
        """Register on `server` (an `extra_servicers` entry of `service.create_server`)."""
        lipsync_legacy_pb2_grpc.add_LipSyncServiceServicer_to_server(self, server)
        return [SERVICE_NAME]

    def GenerateInference(self, request: lipsync_legacy_pb2.InferenceRequest, context: grpc.ServicerContext
                          ) -> lipsync_legacy_pb2.InferenceResponse:
        """The mouth of one frame."""
        return self._infer(request.model_name, request.frame_id, _audio_text(request), "GenerateInference")

    def GenerateBatchInference(self, request: lipsync_legacy_pb2.BatchInferenceRequest,
                               context: grpc.ServicerContext) -> lipsync_legacy_pb2.BatchInferenceResponse:
        """One reply per frame id, in the order asked; a failed frame does not fail the others."""
        started = time.perf_counter()
        audio = _audio_text(request)
        responses = [self._infer(request.model_name, frame_id, audio, "GenerateBatchInference")
                     for frame_id in request.frame_ids]
        return lipsync_legacy_pb2.BatchInferenceResponse(responses=responses,
                                                         total_processing_time_ms=_ms_since(started))

    def StreamInference(self, request_iterator: Iterator[lipsync_legacy_pb2.InferenceRequest],
                        context: grpc.ServicerContext) -> Iterator[lipsync_legacy_pb2.InferenceResponse]:
        """One reply per request, in order, each as soon as it is ready."""
        if not self.capacity.try_acquire():
            exc = self.capacity.refusal()
            log.info("StreamInference refused: %s", exc)
            draining = str(exc).startswith(DRAINING_MESSAGE_PREFIX)  # not full: a client should go elsewhere
            context.abort(grpc.StatusCode.UNAVAILABLE if draining else grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        metrics.STREAMS.labels("legacy", "StreamInference").inc()
        try:
            for request in request_iterator:
                if not context.is_active():
                    return
                yield self._infer(request.model_name, request.frame_id, _audio_text(request), "StreamInference")
        except Exception:
            if context.is_active():
                raise
            # a cancelled client makes reading its requests raise: nothing is wrong on this side
            log.info("StreamInference: the client went away")
        finally:
            self.capacity.release()

    def LoadModel(self, request: lipsync_legacy_pb2.LoadModelRequest, context: grpc.ServicerContext
                  ) -> lipsync_legacy_pb2.LoadModelResponse:
        """Prepare and load a model (and decode its audio, if sent), saying how long that took."""
        started = time.perf_counter()
        reply = lipsync_legacy_pb2.LoadModelResponse(model_name=request.model_name)
        try:
            reply.model_name = self._register(request.model_name, request.package_path)
            model, loaded_now = self._model(reply.model_name)
            audio = _audio_text(request)
            if audio is not None:
                self.audio.get(audio)  # now rather than on the first frame
        except Exception as exc:
            reply.error = _failure(exc, "LoadModel")
            reply.message = f"model {reply.model_name!r} was not loaded"
        else:
            reply.success = True
            state = "loaded" if loaded_now else "already loaded"
            reply.message = f"model {model.name!r} {state}: {model.n_frames} frames at {float(model.fps):g} fps"
        reply.initialization_time_ms = _ms_since(started)
        return reply

    def _infer(self, model_name: str, frame_id: int, audio: str | None, call: str
               ) -> lipsync_legacy_pb2.InferenceResponse:
        """One frame's reply; `call` names the RPC in the metrics."""
        started = time.perf_counter()
        reply = lipsync_legacy_pb2.InferenceResponse(model_name=model_name, frame_id=frame_id)
        try:
            if frame_id < 0:
                raise _BadRequest(f"frame_id {frame_id} is negative: frames count from 0")
            model, reply.auto_loaded = self._model(model_name)
            frame = self._frame(model, frame_id, audio)
        except Exception as exc:
            reply.error = _failure(exc, "inference")
        else:
            reply.success = True
            reply.prediction_data = frame.jpeg
            reply.bounds.extend(frame.bounds)
            reply.prediction_shape = PREDICTION_SHAPE
            metrics.FRAMES.labels(call).inc()
            metrics.FRAME_SECONDS.labels(call).observe(time.perf_counter() - started)
        reply.processing_time_ms = _ms_since(started)
        return reply

    def _frame(self, model: Model, frame_id: int, audio: str | None) -> _Mouth:
        if audio is not None:
            audio_key, mono = self.audio.get(audio)
            frame = self.clips.get(model, audio_key, mono).frame(frame_id)
            if frame is not None:
                return frame
        return self._rest_frame(model, ping_pong(frame_id, model.n_frames))

    def _rest_frame(self, model: Model, model_frame: int) -> _Mouth:
        key = (model.video, model.source_stat, model_frame)
        with self._rest_lock:
            mouth = self._rest.get(key)
        if mouth is not None:
            return mouth
        # a fresh stream, so a frame at rest does not depend on which frames were asked before it
        mouth = _Mouth.of(next(frames_for(model, self.generator, [REST], NO_AUDIO, first_frame=model_frame)))
        with self._rest_lock:
            self._rest[key] = mouth
        return mouth

    def _register(self, model_name: str, package_path: str) -> str:
        """The name LoadModel loads: a video named by package_path is registered under model_name or its stem."""
        video = Path(package_path).expanduser() if package_path else None
        if video is None or not (video.is_file() and video.suffix.lower() in VIDEO_SUFFIXES):
            # the original system's model packages are not videos: the model is looked up by name
            if package_path:
                log.info("LoadModel: package_path %s is not a video file; loading %r by name", package_path, model_name)
            return model_name
        stem = self.store.register(video)  # LipSync clients reach it by its stem too
        return self.store.register(video, model_name) if model_name else stem

    def _model(self, name: str) -> tuple[Model, bool]:
        """The model called `name`, and whether this call had to load it."""
        if not name:
            raise _BadRequest("model_name is empty: name a model video on this server")
        try:
            video = self.store.resolve(name, names_only=True)
        except ModelNotFoundError as exc:
            log.info("unknown model requested: %s", exc)
            # the store's message lists the folders searched: no business of a remote client
            raise ModelNotFoundError(f"no model named {name!r} on this server "
                                     "(lipsync.v1.LipSync/ListModels lists them)") from exc
        loaded_before = self.store.is_loaded(video)
        return self.store.get(video), not loaded_before


def _audio_text(request) -> str | None:
    """The request's base64 WAV, or None when it sends none (an empty string is sent, and refused)."""
    return request.audio_override if request.HasField("audio_override") else None


def _failure(exc: Exception, what: str) -> str:
    """The one-line error a failed reply carries; failures of the server's own are logged."""
    if isinstance(exc, (_BadRequest, AudioError, ModelNotFoundError)):
        return str(exc)
    if isinstance(exc, LipsyncError):
        log.error("%s failed: %s", what, exc)
        return f"{what} failed: {exc}"
    log.exception("%s failed unexpectedly", what)
    return f"{what} failed unexpectedly: {type(exc).__name__}: {exc}"


def _ms_since(started: float) -> int:
    """Whole milliseconds since `started` (a time.perf_counter() value)."""
    return round(1000 * (time.perf_counter() - started))


def add_legacy_service(store: ModelStore, generator: MouthGenerator, capacity: Capacity | None = None
                       ) -> AddServicer:
    """An `extra_servicers` entry for `service.create_server` that serves the original API.

    Pass the same generator and capacity as create_server's, so both APIs draw the same mouths
    from one model memory and share one limit of streams (default: a capacity of its own).
    """
    return LegacyLipSyncServicer(store, generator, capacity).add_to
