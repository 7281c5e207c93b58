"""The original system's API (lipsyncsrv.LipSyncService), called the way its own clients call it.

The client stubs are generated here, from the original definitions written out below, not taken
from lipsync_cli/proto_gen: what passes here works for clients built from the original .proto.
"""

from __future__ import annotations

import base64
import importlib
import io
import itertools
import shutil
import sys
from types import SimpleNamespace

import cv2
import grpc
import numpy as np
import pytest
import soundfile as sf
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import REPO, SAMPLE_SPEECH, SAMPLE_VIDEO
from lipsync_cli.core.generator import MouthImage
from lipsync_cli.core.generators import make_generator
from lipsync_cli.core.timing import ping_pong
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, resample
from lipsync_cli.media.store import ModelStore
from lipsync_cli.rpc.legacy_service import AudioCache, LegacyLipSyncServicer
from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2, lipsync_pb2, lipsync_pb2_grpc
from lipsync_cli.rpc.service import create_server

MODEL = "avatar"  # the bundled sample: 200 frames at 25 fps
TIMEOUT_S = 60  # per call: a hang fails the test instead of stalling it
CLIP_S = 9.0  # longer than the sample model video, so clip frames run past its end
CLIP_RATE_HZ = 44_100  # not the analysis rate, and stereo: the decoding path resamples and mixes down
SERVER_PATHS = str(REPO.parent)  # the checkout and what is next to it: no business of a remote client

# The original definitions, as the original clients generate their stubs from them. The file name
# is ours: protobuf keeps one registry per process, and our server's stubs are in it already, so
# the same definitions must come from the same file name (the name never goes over the wire).
ORIGINAL_PROTO_NAME = "lipsync_legacy.proto"
ORIGINAL_PROTO = """
syntax = "proto3";
package lipsyncsrv;

service LipSyncService {
  rpc GenerateInference(InferenceRequest) returns (InferenceResponse);
  rpc GenerateBatchInference(BatchInferenceRequest) returns (BatchInferenceResponse);
  rpc StreamInference(stream InferenceRequest) returns (stream InferenceResponse);
  rpc LoadModel(LoadModelRequest) returns (LoadModelResponse);
}

message InferenceRequest {
  string model_name = 1;
  int32 frame_id = 2;
  optional string audio_override = 3;
}

message InferenceResponse {
  bool success = 1;
  bytes prediction_data = 2;
  repeated float bounds = 3;
  int32 processing_time_ms = 4;
  string model_name = 5;
  int32 frame_id = 6;
  bool auto_loaded = 7;
  string prediction_shape = 8;
  optional string error = 9;
}

message BatchInferenceRequest {
  string model_name = 1;
  repeated int32 frame_ids = 2;
  optional string audio_override = 3;
}

message BatchInferenceResponse {
  repeated InferenceResponse responses = 1;
  int32 total_processing_time_ms = 2;
}

message LoadModelRequest {
  string model_name = 1;
  string package_path = 2;
  optional string audio_override = 3;
}

message LoadModelResponse {
  bool success = 1;
  string model_name = 2;
  string message = 3;
  int32 initialization_time_ms = 4;
  optional string error = 5;
}
"""


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The original clients' generated stubs: `pb2` (messages) and `grpc` (LipSyncServiceStub)."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("original_stubs")
    (out / ORIGINAL_PROTO_NAME).write_text(ORIGINAL_PROTO)
    assert protoc.main(["grpc_tools.protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}",
                        f"--descriptor_set_out={out / 'original.pb'}", str(out / ORIGINAL_PROTO_NAME)]) == 0
    # the registry refuses a second, different definition of the same names: compare first, so a
    # drift from the original fails here with both schemas shown
    theirs = descriptor_pb2.FileDescriptorSet.FromString((out / "original.pb").read_bytes()).file[0]
    for message in theirs.message_type:
        for field in message.field:
            field.ClearField("json_name")  # protoc adds it for descriptor sets, not for Python stubs
    ours = descriptor_pb2.FileDescriptorProto.FromString(lipsync_legacy_pb2.DESCRIPTOR.serialized_pb)
    assert theirs == ours, "proto/lipsync_legacy.proto differs from the original definitions"
    sys.path.insert(0, str(out))
    try:
        stubs = SimpleNamespace(pb2=importlib.import_module("lipsync_legacy_pb2"),
                                grpc=importlib.import_module("lipsync_legacy_pb2_grpc"))
    finally:
        sys.path.remove(str(out))
    return stubs


class HistoryGenerator:
    """The real generator, with temporal state that shows: each mouth image carries the number of
    frames its stream drew before it. (The sample avatar's own mouth rarely depends on the frames
    before; a talking avatar's does, and so would a neural generator's.)"""

    name = "history"

    def __init__(self):
        self.inner = make_generator()

    def open_stream(self, model):
        stream, drawn = self.inner.open_stream(model), itertools.count()

        class Stream:
            def render(self, **kwargs):
                mouth = stream.render(**kwargs)
                image = cv2.putText(mouth.image.copy(), str(next(drawn)), (8, 40), cv2.FONT_HERSHEY_SIMPLEX,
                                    1.2, (255, 255, 255), 2)
                return MouthImage(image, mouth.bounds)

        return Stream()


def _serve(store):
    """Both APIs on one server over one generator: (server, target, legacy servicer)."""
    generator = HistoryGenerator()
    servicer = LegacyLipSyncServicer(store, generator)
    server, port = create_server(store=store, generator=generator, extra_servicers=[servicer.add_to])
    return server, f"127.0.0.1:{port}", servicer


@pytest.fixture(scope="module")
def service(store, sample_model):
    server, target, servicer = _serve(store)
    yield target, servicer
    server.stop(grace=None)


@pytest.fixture()
def channel(service):
    with grpc.insecure_channel(service[0]) as channel:
        yield channel


@pytest.fixture()
def legacy(channel, original):
    return original.grpc.LipSyncServiceStub(channel)


def _speech(seconds: float) -> np.ndarray:
    """`seconds` of the sample speech (looped), (n, 2) float32 at CLIP_RATE_HZ: a louder and a softer channel."""
    mono, rate_hz = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    looped = np.tile(mono, int(np.ceil(seconds * rate_hz / len(mono))))[: int(seconds * rate_hz)]
    samples = resample(looped, from_rate_hz=rate_hz, to_rate_hz=CLIP_RATE_HZ)
    return np.stack([samples, 0.5 * samples], axis=1)


def _wav_base64(samples: np.ndarray, rate_hz: int = CLIP_RATE_HZ, subtype: str = "PCM_16") -> str:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate_hz, format="WAV", subtype=subtype)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def clip():
    """Real speech as the original clients send it (base64 WAV) and as RenderClip takes it (PCM)."""
    wav = _wav_base64(_speech(CLIP_S))
    pcm = sf.read(io.BytesIO(base64.b64decode(wav)), dtype="int16")[0]
    return SimpleNamespace(wav=wav, pcm=pcm.tobytes(), channels=pcm.shape[1])


def _frame_ok(reply, frame_id: int, model) -> None:
    assert reply.success and not reply.HasField("error"), reply.error
    assert (reply.frame_id, reply.model_name, reply.prediction_shape) == (frame_id, MODEL, "320x320x3")
    image = cv2.imdecode(np.frombuffer(reply.prediction_data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (320, 320, 3)
    assert list(reply.bounds) == model.mouth_bounds[ping_pong(frame_id, model.n_frames)].tolist()


# --- one server, both APIs ----------------------------------------------------------------------

def test_both_services_answer_on_one_port(channel, legacy, original):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("lipsyncsrv.LipSyncService", "lipsync.v1.LipSync"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    assert "lipsyncsrv.LipSyncService" in ProtoReflectionDescriptorDatabase(channel).get_services()
    ours = lipsync_pb2_grpc.LipSyncStub(channel).ListModels(lipsync_pb2.ListModelsRequest(), timeout=TIMEOUT_S)
    assert MODEL in [m.name for m in ours.models]
    loaded = legacy.LoadModel(original.pb2.LoadModelRequest(model_name=MODEL), timeout=TIMEOUT_S)
    assert loaded.success and loaded.model_name == MODEL, loaded.error
    assert "already loaded" in loaded.message  # the server holds it already: nothing to prepare


# --- frames -------------------------------------------------------------------------------------

def test_frames_are_render_clips_frames_and_the_audio_is_decoded_once(service, channel, legacy, original, clip,
                                                                      sample_model):
    """Whatever order frames are asked in, frame i is RenderClip's frame i; the WAV is decoded once."""
    fmt = lipsync_pb2.AudioFormat(sample_rate_hz=CLIP_RATE_HZ, channels=clip.channels,
                                  sample_type=lipsync_pb2.PCM_S16LE)
    expected = list(lipsync_pb2_grpc.LipSyncStub(channel).RenderClip(
        lipsync_pb2.ClipRequest(model=MODEL, format=fmt, audio=clip.pcm), timeout=TIMEOUT_S))
    assert len(expected) > sample_model.n_frames, "the clip must run past the end of the model video"
    decodes_before = service[1].audio.decodes

    pb2 = original.pb2
    late = len(expected) - 10
    replies = {late: legacy.GenerateInference(
        pb2.InferenceRequest(model_name=MODEL, frame_id=late, audio_override=clip.wav), timeout=TIMEOUT_S)}
    batch = legacy.GenerateBatchInference(
        pb2.BatchInferenceRequest(model_name=MODEL, frame_ids=[7, 3, late, 120], audio_override=clip.wav),
        timeout=TIMEOUT_S)
    assert [r.frame_id for r in batch.responses] == [7, 3, late, 120]
    assert batch.total_processing_time_ms >= max(r.processing_time_ms for r in batch.responses)
    requests = (pb2.InferenceRequest(model_name=MODEL, frame_id=i, audio_override=clip.wav)
                for i in range(len(expected)))
    streamed = list(legacy.StreamInference(requests, timeout=TIMEOUT_S))

    assert service[1].audio.decodes - decodes_before == 1
    assert [r.frame_id for r in streamed] == list(range(len(expected)))
    for reply in [*replies.values(), *batch.responses, *streamed]:
        _frame_ok(reply, reply.frame_id, sample_model)
        frame = expected[reply.frame_id]
        assert reply.prediction_data == frame.prediction_data, f"frame {reply.frame_id} differs from RenderClip's"
        assert list(reply.bounds) == list(frame.bounds)


def test_frames_without_audio_or_past_its_end_are_at_rest_and_repeatable(legacy, original, sample_model):
    pb2 = original.pb2
    short = _wav_base64(_speech(1.0))  # 25 frames of speech

    def frame(frame_id, audio=None):
        request = pb2.InferenceRequest(model_name=MODEL, frame_id=frame_id)
        if audio is not None:
            request.audio_override = audio
        reply = legacy.GenerateInference(request, timeout=TIMEOUT_S)
        _frame_ok(reply, frame_id, sample_model)
        return reply.prediction_data

    past_video = sample_model.n_frames + 57  # plays the model video backwards
    at_rest = frame(past_video)
    assert frame(past_video, short) == at_rest  # past the audio's end: the same rest mouth
    for i in range(25):
        frame(i, short)
    assert frame(past_video, short) == at_rest == frame(past_video)


# --- failures -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "frame_id", "audio", "needle"), [
    ("no-such-model", 0, None, "no model named 'no-such-model'"),
    ("../samples/avatar", 0, None, "no model named"),
    ("", 0, None, "model_name is empty"),
    (MODEL, -1, None, "negative"),
    (MODEL, 0, "not base64 !!!", "not base64"),
    (MODEL, 0, "", "empty"),
    (MODEL, 0, base64.b64encode(b"RIFF but not a wave file at all").decode(), "not a readable audio file"),
    (MODEL, 0, _wav_base64(np.full((4_410, 1), np.nan, np.float32), subtype="FLOAT"), "NaN"),
])
def test_each_failure_is_a_failed_reply(legacy, original, model, frame_id, audio, needle):
    pb2 = original.pb2
    request = pb2.InferenceRequest(model_name=model, frame_id=frame_id)
    batch = pb2.BatchInferenceRequest(model_name=model, frame_ids=[frame_id])
    if audio is not None:
        request.audio_override = batch.audio_override = audio
    replies = [legacy.GenerateInference(request, timeout=TIMEOUT_S),
               *legacy.GenerateBatchInference(batch, timeout=TIMEOUT_S).responses,
               *legacy.StreamInference(iter([request]), timeout=TIMEOUT_S)]
    for reply in replies:
        assert not reply.success and needle in reply.error, reply.error
        assert not reply.prediction_data and not reply.bounds
        assert SERVER_PATHS not in reply.error, "server paths stay on the server"


def test_a_failed_frame_does_not_fail_its_batch_or_stream(legacy, original, sample_model):
    pb2 = original.pb2
    batch = legacy.GenerateBatchInference(pb2.BatchInferenceRequest(model_name=MODEL, frame_ids=[0, -5, 1]),
                                          timeout=TIMEOUT_S)
    assert [r.success for r in batch.responses] == [True, False, True]
    requests = [pb2.InferenceRequest(model_name=MODEL, frame_id=0),
                pb2.InferenceRequest(model_name="no-such-model", frame_id=1),
                pb2.InferenceRequest(model_name=MODEL, frame_id=2, audio_override="%%%"),
                pb2.InferenceRequest(model_name=MODEL, frame_id=3)]
    assert [r.success for r in legacy.StreamInference(iter(requests), timeout=TIMEOUT_S)] == [True, False, False, True]
    failed = legacy.LoadModel(pb2.LoadModelRequest(model_name="no-such-model"), timeout=TIMEOUT_S)
    assert not failed.success and "no model named" in failed.error


def test_audio_cache_drops_the_least_recently_used():
    cache = AudioCache(limit=2)
    wavs = {name: _wav_base64(_speech(seconds)) for name, seconds in (("a", 0.1), ("b", 0.2), ("c", 0.3))}
    for name in "abac":  # a used again after b: b is the least recently used when c comes
        cache.get(wavs[name])
    assert cache.decodes == 3
    cache.get(wavs["a"])
    cache.get(wavs["c"])
    assert cache.decodes == 3
    key, samples = cache.get(wavs["b"])
    assert cache.decodes == 4 and samples.dtype == np.float32 and samples.ndim == 1


# --- loading models -----------------------------------------------------------------------------

def test_load_model_and_auto_load(cache_dir, sample_model, original, tmp_path):
    """A fresh store: the first frame loads the model; LoadModel registers a video by package_path."""
    guest = shutil.copy(SAMPLE_VIDEO, tmp_path / "guest.mp4")
    server, target, servicer = _serve(ModelStore(cache_dir=cache_dir))
    pb2 = original.pb2
    try:
        with grpc.insecure_channel(target) as channel:
            legacy = original.grpc.LipSyncServiceStub(channel)
            first, again = (legacy.GenerateInference(pb2.InferenceRequest(model_name=MODEL, frame_id=4),
                                                     timeout=TIMEOUT_S) for _ in range(2))
            assert first.success and first.auto_loaded and again.success and not again.auto_loaded

            store = servicer.store
            assert not store.is_loaded(guest)
            by_stem = legacy.LoadModel(pb2.LoadModelRequest(package_path=str(guest)), timeout=TIMEOUT_S)
            assert by_stem.success and by_stem.model_name == "guest", by_stem.error
            assert "'guest' loaded" in by_stem.message, by_stem.message  # a new video: prepared now
            assert store.is_loaded(guest)
            loaded = store.get(guest)
            again = legacy.LoadModel(pb2.LoadModelRequest(package_path=str(guest)), timeout=TIMEOUT_S)
            assert again.success and "already loaded" in again.message, again.message
            assert store.get(guest) is loaded, "the second LoadModel is served from the store, not prepared again"
            renamed = legacy.LoadModel(pb2.LoadModelRequest(
                model_name="host", package_path=str(guest), audio_override=_wav_base64(_speech(0.5))),
                timeout=TIMEOUT_S)
            assert renamed.success and renamed.model_name == "host", renamed.error
            assert servicer.audio.decodes == 1
            for name in ("guest", "host"):
                reply = legacy.GenerateInference(pb2.InferenceRequest(model_name=name, frame_id=4), timeout=TIMEOUT_S)
                assert reply.success and not reply.auto_loaded and reply.prediction_data == first.prediction_data
            # our own API reaches a registered video by its stem
            frames = lipsync_pb2_grpc.LipSyncStub(channel).RenderClip(lipsync_pb2.ClipRequest(
                model="guest", audio=b"\0\0" * SAMPLE_RATE_HZ, format=lipsync_pb2.AudioFormat(
                    sample_rate_hz=SAMPLE_RATE_HZ, channels=1, sample_type=lipsync_pb2.PCM_S16LE)), timeout=TIMEOUT_S)
            assert len(list(frames)) == 25

            # an original model package is no video: the model is looked up by its name
            package = legacy.LoadModel(pb2.LoadModelRequest(model_name=MODEL, package_path=str(tmp_path)),
                                       timeout=TIMEOUT_S)
            assert package.success and package.model_name == MODEL, package.error
    finally:
        server.stop(grace=None)
