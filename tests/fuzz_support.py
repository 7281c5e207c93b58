"""Fuzz targets shared by tests/test_fuzz.py (short runs) and bench/fuzz.py (long runs).

Each target builds its real inputs in a work folder (small WAV/FLAC/OGG/MP3/M4A files, a tiny model
video and its cache, real gRPC and HTTP servers on port 0) and checks one case against the contract
of the code under test. A case that breaks the contract raises `ContractBroken`; anything else a
check raises is a crash too. Cases come from hypothesis strategies (`strategy()`) or, for atheris,
from raw bytes (`from_bytes`), so a coverage-guided run and a property-based run check the same thing.
"""

from __future__ import annotations

import base64
import contextlib
import faulthandler
import http.client
import io
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
SAMPLE_VIDEO = REPO / "samples" / "avatar.mp4"
TINY_MODEL = "tiny"  # the one real model name of the work folder
TINY_MODEL_FRAMES = 4  # frames of the sample avatar in the tiny model: enough for a face, quick to prepare
HANG_LIMIT_S = 60  # one case running longer than this is a hang: the process dumps its stacks and exits
RPC_TIMEOUT_S = 30  # per gRPC call: past it the call is a hang (DEADLINE_EXCEEDED), reported as such
SECRET = b"FUZZ-SECRET-OUTSIDE-THE-MODEL-FOLDER"


class ContractBroken(AssertionError):
    """A case got an outcome its contract does not allow (the message says which)."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ContractBroken(message)


@contextlib.contextmanager
def hang_guard(limit_s: float = HANG_LIMIT_S) -> Iterator[None]:
    """A case that does not return within limit_s kills the process with every thread's stack: a
    hang in native code (a decoder) cannot be interrupted any other way."""
    faulthandler.dump_traceback_later(limit_s, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# --- byte mutations -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutation:
    """One edit of a file's bytes; `at` is taken modulo the length so every edit applies."""

    kind: str  # "flip" a bit, "set" bytes, "insert", "delete", "truncate", "word" (a 32-bit header field)
    at: int
    data: bytes = b""


_WORDS = (0, 1, 7, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000, 8000, 44100, 2**31 - 1)


def mutations(max_edits: int = 6) -> st.SearchStrategy[list[Mutation]]:
    at = st.integers(0, 2**20)
    edit = st.one_of(
        st.builds(Mutation, st.just("flip"), at, st.binary(min_size=1, max_size=1)),
        st.builds(Mutation, st.just("set"), at, st.binary(min_size=1, max_size=16)),
        st.builds(Mutation, st.just("insert"), at, st.binary(min_size=1, max_size=64)),
        st.builds(Mutation, st.just("delete"), at, st.binary(min_size=1, max_size=4)),
        st.builds(Mutation, st.just("truncate"), at),
        # header fields (sizes, rates, counts) live in the first bytes: aim some edits there
        st.builds(Mutation, st.just("word"), st.integers(0, 96),
                  st.sampled_from(_WORDS).map(lambda w: struct.pack("<I", w))),
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def mutate(seed: bytes, edits: list[Mutation]) -> bytes:
    data = bytearray(seed)
    for m in edits:
        n = len(data)
        if n == 0:
            break
        i = m.at % n
        if m.kind == "flip":
            data[i] ^= 1 << (m.data[0] % 8)
        elif m.kind in ("set", "word"):
            data[i:i + len(m.data)] = m.data
        elif m.kind == "insert":
            data[i:i] = m.data
        elif m.kind == "delete":
            del data[i:i + len(m.data)]
        elif m.kind == "truncate":
            del data[i:]
    return bytes(data)


def tone(seconds: float, rate_hz: int, channels: int = 1) -> np.ndarray:
    """(n, channels) float32 speech-like test audio (a 220 Hz tone with a slow envelope)."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    mono = (0.4 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / seconds)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


# --- audio loading ------------------------------------------------------------------------------

def audio_seeds() -> dict[str, bytes]:
    """Small real files of every kind `load_audio` reads: name (with its suffix) -> bytes."""
    import av
    import soundfile as sf

    seeds = {}
    for name, rate, channels, fmt, subtype in [
        ("pcm16.wav", 16_000, 1, "WAV", "PCM_16"), ("float.wav", 44_100, 2, "WAV", "FLOAT"),
        ("pcm24.wav", 48_000, 2, "WAV", "PCM_24"), ("speech.flac", 22_050, 1, "FLAC", "PCM_16"),
        ("speech.ogg", 16_000, 1, "OGG", "VORBIS"), ("speech.mp3", 44_100, 1, "MP3", "MPEG_LAYER_III"),
    ]:
        buffer = io.BytesIO()
        sf.write(buffer, tone(0.15, rate, channels), rate, format=fmt, subtype=subtype)
        seeds[name] = buffer.getvalue()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:  # the sound of a video: AAC in MP4
        stream = container.add_stream("aac", rate=48_000)
        stream.layout = "mono"
        samples = tone(0.15, 48_000)[:, 0]
        for start in range(0, len(samples) - 1023, 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48_000, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    seeds["speech.m4a"] = buffer.getvalue()
    return seeds


class AudioTarget:
    """`media.audio.load_audio` on damaged files: valid samples, or AudioError; nothing else."""

    name = "audio"

    def __init__(self, work: Path):
        self.work = work
        self.seeds = audio_seeds()
        self.names = sorted(self.seeds)

    def strategy(self) -> st.SearchStrategy:
        return st.tuples(st.sampled_from(self.names), mutations())

    def check(self, case) -> None:
        name, edits = case
        self.check_file(Path(name).suffix, mutate(self.seeds[name], edits))

    def from_bytes(self, data: bytes) -> None:
        # atheris: the first byte picks the suffix the file is saved under, the rest is the file
        suffixes = sorted({Path(n).suffix for n in self.names})
        self.check_file(suffixes[data[0] % len(suffixes)] if data else ".wav", data[1:])

    def check_file(self, suffix: str, data: bytes) -> None:
        from lipsync_cli.errors import AudioError
        from lipsync_cli.media.audio import load_audio

        path = self.work / f"case{suffix}"
        path.write_bytes(data)
        try:
            clip = load_audio(path)
        except AudioError as exc:
            require(str(exc).startswith(str(path)), f"AudioError without the file name: {exc}")
            return
        require(clip.samples.dtype == np.float32 and clip.samples.ndim == 1 and len(clip.samples) > 0,
                f"bad samples {clip.samples.dtype} {clip.samples.shape}")
        require(bool(np.isfinite(clip.samples).all()) and bool(np.isfinite(clip.original).all()), "NaN samples")
        require(clip.original.ndim == 2 and clip.original_rate_hz > 0, "bad original audio")

    def seed_files(self) -> dict[str, bytes]:
        suffixes = sorted({Path(n).suffix for n in self.names})
        return {n: bytes([suffixes.index(Path(n).suffix)]) + b for n, b in self.seeds.items()}


# --- model video probing ------------------------------------------------------------------------

MAX_DECODED_FRAMES = 48  # a damaged header may announce any count: decode this many at most


def video_seed(frames: int = 8, size_px: int = 64) -> bytes:
    from lipsync_cli.media.video import Mp4Writer

    rng = np.random.default_rng(3)
    with _tempdir() as tmp:
        with Mp4Writer(tmp / "seed.mp4", fps=Fraction(25), width=size_px, height=size_px,
                       audio_rate_hz=16_000) as writer:
            for _ in range(frames):
                writer.write_frame(rng.integers(0, 256, (size_px, size_px, 3), dtype=np.uint8))
            writer.write_audio(tone(frames / 25, 16_000))
        return (tmp / "seed.mp4").read_bytes()


@contextlib.contextmanager
def _tempdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lipsync-fuzz-") as d:
        yield Path(d)


class VideoTarget:
    """`media.video.probe_video` / `iter_frames` on damaged MP4s: valid info and frames, or VideoError."""

    name = "video"

    def __init__(self, work: Path):
        self.work = work
        self.seed = video_seed()

    def strategy(self) -> st.SearchStrategy:
        return mutations()

    def check(self, case) -> None:
        self.from_bytes(mutate(self.seed, case))

    def from_bytes(self, data: bytes) -> None:
        from lipsync_cli.errors import VideoError
        from lipsync_cli.media.video import iter_frames, probe_video

        path = self.work / "case.mp4"
        path.write_bytes(data)
        try:
            info = probe_video(path)
            require(info.fps > 0 and info.width >= 0 and info.height >= 0 and info.n_frames >= 0,
                    f"bad VideoInfo {info}")
            for i, frame in enumerate(iter_frames(path)):
                require(frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3,
                        f"bad frame {frame.dtype} {frame.shape}")
                if i >= MAX_DECODED_FRAMES:
                    break
        except VideoError as exc:
            require(str(path) in str(exc), f"VideoError without the file name: {exc}")

    def seed_files(self) -> dict[str, bytes]:
        return {"seed.mp4": self.seed}


# --- the model cache ----------------------------------------------------------------------------

def make_tiny_model(models_dir: Path) -> Path:
    """A real model video: the first TINY_MODEL_FRAMES frames of the sample avatar (a face in each)."""
    from lipsync_cli.media.video import Mp4Writer, iter_frames

    models_dir.mkdir(parents=True, exist_ok=True)
    video = models_dir / f"{TINY_MODEL}.mp4"
    if video.exists():
        return video
    frames = []
    for frame in iter_frames(SAMPLE_VIDEO):
        frames.append(frame)
        if len(frames) == TINY_MODEL_FRAMES:
            break
    with Mp4Writer(video, fps=Fraction(25), width=frames[0].shape[1], height=frames[0].shape[0]) as writer:
        for frame in frames:
            writer.write_frame(frame)
    return video


class Pickled:
    """Unpickling this writes the marker file: a cache that holds one must never be unpickled."""

    marker: Path | None = None

    def __reduce__(self):
        return (Path.write_text, (Pickled.marker, "unpickled"))


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@dataclass(frozen=True)
class Tamper:
    """A structural change of the cache's members (the byte mutations cover the rest)."""

    kind: str  # "drop", "dtype", "shorter", "scalar", "object" (a pickled object array), "raw_pickle", "extra"
    key: str


class CacheTarget:
    """A tampered or truncated cache is rebuilt through `ModelStore.get`, never crashes, never unpickles.

    `real_rebuild=False` replaces the slow tracking of `build_cache` (seconds) with the arrays of the
    first, real build: what is fuzzed is how a cache is checked and loaded, not how it is built.
    """

    name = "cache"

    def __init__(self, work: Path, *, real_rebuild: bool = False):
        from lipsync_cli.media.cache import cache_path, prepare_model

        self.work, self.real_rebuild = work, real_rebuild
        self.video = make_tiny_model(work / "models")
        self.cache_dir = work / "cache"
        self.cache_file = cache_path(self.video, self.cache_dir)
        prepare_model(self.video, cache_dir=self.cache_dir)
        self.good = self.cache_file.read_bytes()
        with np.load(self.cache_file, allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.marker = work / "unpickled.marker"
        self.rebuilds = 0

    def strategy(self) -> st.SearchStrategy:
        from lipsync_cli.media.cache import REQUIRED_KEYS

        tamper = st.builds(Tamper, st.sampled_from(["drop", "dtype", "shorter", "scalar", "object", "raw_pickle",
                                                    "extra"]), st.sampled_from(REQUIRED_KEYS))
        return st.one_of(tamper, mutations())

    def tampered(self, case) -> bytes:
        if not isinstance(case, Tamper):
            return mutate(self.good, case)
        arrays = dict(self.arrays)
        value = arrays[case.key]
        if case.kind == "drop":
            del arrays[case.key]
        elif case.kind == "dtype":
            arrays[case.key] = value.astype(np.complex64 if value.dtype.kind != "c" else np.int8)
        elif case.kind == "shorter":
            arrays[case.key] = value.reshape(-1)[: max(0, value.size // 2)]
        elif case.kind == "scalar":
            arrays[case.key] = np.array(1e30)
        elif case.kind in ("object", "extra"):
            evil = np.empty(1, dtype=object)
            evil[0] = Pickled()
            arrays["evil" if case.kind == "extra" else case.key] = evil
        data = npz_bytes(arrays)
        if case.kind == "raw_pickle":  # the member's .npy bytes replaced by a bare pickle
            buffer = io.BytesIO()
            with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
                for item in src.infolist():
                    raw = pickle.dumps(Pickled()) if item.filename == f"{case.key}.npy" else src.read(item)
                    dst.writestr(item, raw)
            data = buffer.getvalue()
        return data

    def check(self, case) -> None:
        self.check_bytes(self.tampered(case))

    def from_bytes(self, data: bytes) -> None:
        self.check_bytes(data)

    def seed_files(self) -> dict[str, bytes]:
        return {"cache.npz": self.good}

    def check_bytes(self, data: bytes) -> None:
        from lipsync_cli.media import cache as cache_module
        from lipsync_cli.media.store import ModelStore

        Pickled.marker = self.marker
        self.marker.unlink(missing_ok=True)
        self.cache_file.write_bytes(data)
        real_load, real_build = np.load, cache_module.build_cache

        def guarded_load(*args, **kwargs):
            require(not kwargs.get("allow_pickle", False), "np.load called with allow_pickle=True")
            return real_load(*args, **kwargs)

        def recorded_build(video, **kwargs):
            self.rebuilds += 1
            return real_build(video, **kwargs) if self.real_rebuild else dict(self.arrays)

        np.load, cache_module.build_cache = guarded_load, recorded_build
        try:
            model = ModelStore(cache_dir=self.cache_dir).get(self.video)
            self._check_model(model)
        finally:
            np.load, cache_module.build_cache = real_load, real_build
            require(not self.marker.exists(), "a pickle inside the cache was executed")

    def _check_model(self, model) -> None:
        good = self.arrays
        require(model.n_frames == len(good["face_found"]), f"{model.n_frames} frames, not {len(good['face_found'])}")
        require((model.width, model.height) == tuple(int(v) for v in good["frame_size"]), "wrong frame size")
        for name in ("face_bounds", "mouth_bounds", "landmarks", "mouth_open", "mouth_width"):
            value = getattr(model, name)
            require(isinstance(value, np.ndarray), f"{name} is a {type(value).__name__}, not an array")
            require(value.dtype == np.float32 and value.shape == good[name].shape, f"{name}: {value.dtype} {value.shape}")
            require(bool(np.isfinite(value).all()), f"{name} is not finite")
        for i in range(model.n_frames):
            frame, region = model.frame(i), model.region(i)
            require(frame is not None and frame.shape == (model.height, model.width, 3), f"frame {i} does not decode")
            require(region is not None and region.shape == (320, 320, 3), f"region {i} does not decode")


# --- gRPC: both services ------------------------------------------------------------------------

OK_CODES = ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED")


@dataclass(frozen=True)
class RpcCase:
    rpc: str  # "clip", "stream", "list", "infer", "batch", "legacy_stream", "load"
    model: str
    rate_hz: int
    channels: int
    sample_type: int
    audio: bytes
    first_frame: int
    frame_ids: tuple[int, ...]
    audio_override: str | None
    package_path: str
    chunks: tuple[bytes, ...]
    restart: bool  # a second StreamStart in the middle of the stream


class GrpcTarget:
    """Both gRPC services on one real server: every call ends OK or with a proper refusal
    (INVALID_ARGUMENT, NOT_FOUND; for the original API a reply with success=false and an error), never
    INTERNAL or UNKNOWN, and the server answers its health check after every call."""

    name = "grpc"

    def __init__(self, work: Path):
        import grpc

        from lipsync_cli.core.generators import make_generator
        from lipsync_cli.media.store import ModelStore
        from lipsync_cli.rpc.legacy_service import add_legacy_service
        from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2_grpc, lipsync_pb2_grpc
        from lipsync_cli.rpc.service import create_server

        self.work = work
        make_tiny_model(work / "models")
        store = ModelStore(models_dir=work / "models", cache_dir=work / "cache")
        store.get(TINY_MODEL)
        generator = make_generator()
        self.server, port = create_server(store=store, generator=generator,
                                          extra_servicers=[add_legacy_service(store, generator)])
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = lipsync_pb2_grpc.LipSyncStub(self.channel)
        self.legacy = lipsync_legacy_pb2_grpc.LipSyncServiceStub(self.channel)
        self.wav = base64.b64encode(_wav(tone(0.3, 16_000))).decode()

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=None)

    def strategy(self) -> st.SearchStrategy:
        names = st.one_of(st.sampled_from([TINY_MODEL, f"{TINY_MODEL}.mp4", "", "../models/tiny", "/etc/passwd",
                                           "nobody", "tiny/../tiny", ".", "..", "TINY", " tiny", "tiny\x00"]),
                          st.text(max_size=40))
        rates = st.one_of(st.sampled_from([0, 1, 7999, 8000, 11025, 16000, 44100, 48000, 192000, 192001,
                                           2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
        channels = st.one_of(st.integers(0, 9), st.sampled_from([2**31, 2**32 - 1]))
        sample_types = st.integers(-3, 6)  # 0 unspecified, 1 and 2 known, the rest unknown values
        audio = st.one_of(st.binary(max_size=6000), st.integers(0, 4000).map(_tone_bytes))
        overrides = st.one_of(st.none(), st.just(""), st.just(self.wav), st.text(max_size=60),
                              st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
                              mutations(3).map(lambda m: base64.b64encode(
                                  mutate(base64.b64decode(self.wav), m)).decode()))
        frame_ids = st.one_of(st.integers(-2**31, 2**31 - 1), st.integers(-2, 40))
        return st.builds(
            RpcCase, st.sampled_from(["clip", "stream", "list", "infer", "batch", "legacy_stream", "load"]),
            names, rates, channels, sample_types, audio, st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 10)),
            st.lists(frame_ids, max_size=4).map(tuple), overrides,
            st.sampled_from(["", "/etc/passwd", "/nonexistent/x.mp4", "../secret", str(SAMPLE_VIDEO) + "x"]),
            st.lists(st.binary(max_size=2000), max_size=4).map(tuple), st.booleans())

    def from_bytes(self, data: bytes) -> None:
        import atheris

        fdp = atheris.FuzzedDataProvider(data)
        pick = lambda options: options[fdp.ConsumeIntInRange(0, len(options) - 1)]  # noqa: E731
        override = pick([None, "", self.wav, fdp.ConsumeUnicodeNoSurrogates(40),
                         base64.b64encode(fdp.ConsumeBytes(200)).decode()])
        self.check(RpcCase(
            rpc=pick(["clip", "stream", "list", "infer", "batch", "legacy_stream", "load"]),
            model=pick([TINY_MODEL, fdp.ConsumeUnicodeNoSurrogates(20)]),
            rate_hz=pick([16000, 48000, fdp.ConsumeIntInRange(0, 2**32 - 1)]),
            channels=fdp.ConsumeIntInRange(0, 9), sample_type=fdp.ConsumeIntInRange(-3, 6),
            audio=pick([_tone_bytes(fdp.ConsumeIntInRange(0, 4000)), fdp.ConsumeBytes(3000)]),
            first_frame=fdp.ConsumeIntInRange(0, 2**32 - 1),
            frame_ids=tuple(fdp.ConsumeIntInRange(-2**31, 2**31 - 1) for _ in range(fdp.ConsumeIntInRange(0, 3))),
            audio_override=override, package_path=pick(["", "/etc/passwd", fdp.ConsumeUnicodeNoSurrogates(30)]),
            chunks=tuple(fdp.ConsumeBytes(1500) for _ in range(fdp.ConsumeIntInRange(0, 3))),
            restart=fdp.ConsumeBool()))

    def check(self, case: RpcCase) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            getattr(self, f"_{case.rpc}")(case)
        except grpc.RpcError as exc:
            code = exc.code().name
            require(code in OK_CODES, f"{case.rpc} ended {code}: {exc.details()}")
            require("Traceback" not in (exc.details() or ""), "a traceback in the status message")
        health = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
        require(health.status == health_pb2.HealthCheckResponse.SERVING, "the server stopped serving")

    def _format(self, case: RpcCase):
        from lipsync_cli.rpc.proto_gen import lipsync_pb2

        return lipsync_pb2.AudioFormat(sample_rate_hz=case.rate_hz, channels=case.channels,
                                       sample_type=case.sample_type)

    def _clip(self, case: RpcCase) -> None:
        from lipsync_cli.rpc.proto_gen import lipsync_pb2

        request = lipsync_pb2.ClipRequest(model=case.model, format=self._format(case), audio=case.audio,
                                          first_frame=case.first_frame)
        for i, frame in enumerate(self.stub.RenderClip(request, timeout=RPC_TIMEOUT_S)):
            require(frame.index == i and len(frame.bounds) == 4 and frame.prediction_data[:2] == b"\xff\xd8",
                    f"bad frame {i}")

    def _stream(self, case: RpcCase) -> None:
        from lipsync_cli.rpc.proto_gen import lipsync_pb2

        start = lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=case.model, format=self._format(case),
                                                                     first_frame=case.first_frame))
        messages = [start] + [lipsync_pb2.AudioChunk(audio=c, captured_at_s=0.04 * i) for i, c in enumerate(case.chunks)]
        if case.restart:
            messages.insert(len(messages) // 2 + 1, start)
        if not case.audio:  # no StreamStart at all: the stream begins with audio
            messages = messages[1:]
        for i, frame in enumerate(self.stub.StreamAudio(iter(messages), timeout=RPC_TIMEOUT_S)):
            require(frame.index == i, f"frame {frame.index} came as number {i}")

    def _list(self, case: RpcCase) -> None:
        from lipsync_cli.rpc.proto_gen import lipsync_pb2

        names = [m.name for m in self.stub.ListModels(lipsync_pb2.ListModelsRequest(), timeout=RPC_TIMEOUT_S).models]
        require(TINY_MODEL in names, f"ListModels lost the model: {names}")

    def _legacy_reply(self, reply, frame_id: int) -> None:
        require(reply.frame_id == frame_id, "the reply names another frame")
        if reply.success:
            require(reply.prediction_data[:2] == b"\xff\xd8" and len(reply.bounds) == 4, "a success without a mouth")
        else:
            require(reply.HasField("error") and reply.error, "a failed reply without an error")
            require("unexpectedly" not in reply.error, f"an unexpected failure: {reply.error}")

    def _legacy_request(self, case: RpcCase, frame_id: int):
        from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2

        request = lipsync_legacy_pb2.InferenceRequest(model_name=case.model, frame_id=frame_id)
        if case.audio_override is not None:
            request.audio_override = case.audio_override
        return request

    def _infer(self, case: RpcCase) -> None:
        frame_id = case.frame_ids[0] if case.frame_ids else 0
        self._legacy_reply(self.legacy.GenerateInference(self._legacy_request(case, frame_id), timeout=RPC_TIMEOUT_S),
                           frame_id)

    def _batch(self, case: RpcCase) -> None:
        from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2

        request = lipsync_legacy_pb2.BatchInferenceRequest(model_name=case.model, frame_ids=case.frame_ids)
        if case.audio_override is not None:
            request.audio_override = case.audio_override
        reply = self.legacy.GenerateBatchInference(request, timeout=RPC_TIMEOUT_S)
        require(len(reply.responses) == len(case.frame_ids), "a batch reply of another length")
        for frame_id, one in zip(case.frame_ids, reply.responses):
            self._legacy_reply(one, frame_id)

    def _legacy_stream(self, case: RpcCase) -> None:
        requests = [self._legacy_request(case, f) for f in case.frame_ids]
        replies = list(self.legacy.StreamInference(iter(requests), timeout=RPC_TIMEOUT_S))
        require(len(replies) == len(requests), "a stream reply of another length")
        for frame_id, one in zip(case.frame_ids, replies):
            self._legacy_reply(one, frame_id)

    def _load(self, case: RpcCase) -> None:
        from lipsync_cli.rpc.proto_gen import lipsync_legacy_pb2

        request = lipsync_legacy_pb2.LoadModelRequest(model_name=case.model, package_path=case.package_path)
        if case.audio_override is not None:
            request.audio_override = case.audio_override
        reply = self.legacy.LoadModel(request, timeout=RPC_TIMEOUT_S)
        if not reply.success:
            require(reply.HasField("error") and reply.error, "a failed LoadModel without an error")
            require("unexpectedly" not in reply.error, f"an unexpected failure: {reply.error}")


def _wav(samples: np.ndarray, rate_hz: int = 16_000) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate_hz, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _tone_bytes(n_samples: int) -> bytes:
    return (tone(1.0, 16_000)[:n_samples, 0] * 32767).astype("<i2").tobytes()


# --- HTTP: Range and the model path -------------------------------------------------------------

_RANGE_RE = re.compile(r"^bytes=(.*)$", re.IGNORECASE)
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")  # RFC 9110 token: a range unit's syntax
_SPEC_RE = re.compile(r"^(\d*)-(\d*)$")
_PATH_TOKENS = ["..", "/", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%00", "%0a", "%0d", "%20", "%25", "%",
                TINY_MODEL, ".mp4", "secret", "secret.txt", "%c0%ae", "%c0%af", "%e2%80%ae", "models", "~",
                "etc", "passwd", ";", "?", "#", "//", "./", "A", "%ef%bc%8f", "%u002e", "..%2f", "\u00e9", "\u4e2d"]


def parse_range(value: str, size: int) -> list[tuple[int, int]] | None:
    """RFC 9110 §14.1.2 byte ranges -> inclusive (first, last) pairs clipped to the file, [] when none
    is satisfiable; None when the value is not a valid bytes range (the server may ignore it)."""
    m = _RANGE_RE.match(value)
    if not m:
        return None
    out = []
    specs = [s.strip(" \t") for s in m.group(1).split(",")]
    if not any(specs):
        return None
    for spec in specs:
        if not spec:
            continue  # the list rule allows empty elements
        sm = _SPEC_RE.match(spec)
        if not sm or (not sm.group(1) and not sm.group(2)):
            return None
        first, last = sm.group(1), sm.group(2)
        if first:
            a = int(first)
            b = int(last) if last else size - 1
            if last and b < a:
                return None
            if a < size:
                out.append((a, min(b, size - 1)))
        elif int(last) > 0:
            out.append((max(0, size - int(last)), size - 1))
    return out


@dataclass(frozen=True)
class HttpCase:
    path: str  # what follows /api/model-video/, sent as written
    range_header: str | None


class HttpTarget:
    """`lipsync serve`'s HTTP app: Range per RFC 9110 (an unknown unit is ignored and the whole file
    sent; unsatisfiable is 416; a valid range is 206 with those bytes) and model paths (200 only for
    real model names, else 400/404, never a byte of a file outside the models folder)."""

    name = "http"

    def __init__(self, work: Path, *, strict_units: bool = True):
        from lipsync_cli.media.models import served_models
        from lipsync_cli.media.store import ModelStore
        from lipsync_cli.web.http_server import create_server
        from lipsync_cli.web.options import HttpOptions

        self.strict_units = strict_units
        models = work / "models"
        make_tiny_model(models)
        for name in ("secret.mp4", "secret.txt", f"{TINY_MODEL}2.mp4"):
            (work / name).write_bytes(SECRET)
        store = ModelStore(models_dir=models, cache_dir=work / "cache")
        self.server, self.port = create_server(store, HttpOptions(openai_api_key=None, token_secret=None),
                                               host="127.0.0.1", port=0)
        self.allowed = {v.read_bytes() for v in served_models(models_dir=models).values()}
        self.allowed.add(SAMPLE_VIDEO.read_bytes())  # served by name everywhere: the bundled sample
        self.video = (models / f"{TINY_MODEL}.mp4").read_bytes()

    def close(self) -> None:
        self.server.stop()

    def strategy(self) -> st.SearchStrategy:
        path = st.one_of(st.lists(st.sampled_from(_PATH_TOKENS), max_size=8).map("".join),
                         st.text(max_size=30).map(lambda t: "".join(f"%{b:02x}" for b in t.encode())),
                         st.just(TINY_MODEL))
        number = st.one_of(st.integers(0, 70_000), st.sampled_from(["", "0", "-1", "+5", "1_0", " 7", "99999999999999999999",
                                                                     "0x10", "1e3"])).map(str)
        spec = st.one_of(st.tuples(number, number).map("-".join), st.text("0123456789-, =", max_size=10))
        unit = st.sampled_from(["bytes", "Bytes", "BYTES", "bytes ", "items", "none", "", "byte", "seconds", "x-bytes"])
        ranges = st.one_of(st.none(), st.builds(lambda u, s: f"{u}={','.join(s)}", unit, st.lists(spec, min_size=1,
                                                                                                   max_size=3)),
                           st.text(max_size=20))
        return st.one_of(st.builds(HttpCase, path, st.none()), st.builds(HttpCase, st.just(TINY_MODEL), ranges))

    def from_bytes(self, data: bytes) -> None:
        import atheris

        fdp = atheris.FuzzedDataProvider(data)
        if fdp.ConsumeBool():
            self.check(HttpCase("".join(_PATH_TOKENS[fdp.ConsumeIntInRange(0, len(_PATH_TOKENS) - 1)]
                                        for _ in range(fdp.ConsumeIntInRange(0, 8))), None))
        else:
            self.check(HttpCase(TINY_MODEL, fdp.ConsumeUnicodeNoSurrogates(40)))

    def check(self, case: HttpCase) -> None:
        headers = {} if case.range_header is None else {"Range": case.range_header}
        try:
            status, got, body = self._get(f"/api/model-video/{case.path}", headers)
        except (http.client.InvalidURL, ValueError, UnicodeEncodeError):
            return  # the client itself refuses to send it (control characters, non-latin-1 header)
        require(SECRET not in body, f"the secret file was served for {case}")
        require(status < 500, f"{status} for {case}")
        if case.range_header is None:
            require(status in (200, 400, 404), f"{status} for a plain GET of {case.path!r}")
            require(status != 200 or body in self.allowed, f"200 with bytes of no model for {case.path!r}")
            return
        self._check_range(case.range_header, status, got, body)

    def _check_range(self, value: str, status: int, got: dict, body: bytes) -> None:
        size = len(self.video)
        if status == 200:
            require(body == self.video, "200 without the whole file")
        if status == 206 and "multipart" not in got.get("content-type", ""):
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", got.get("content-range", ""))
            require(m is not None and int(m.group(3)) == size, f"bad Content-Range {got.get('content-range')}")
            a, b = int(m.group(1)), int(m.group(2))
            require(body == self.video[a:b + 1], f"206 bytes {a}-{b} are not the file's")
        unit = value.split("=", 1)[0].strip(" \t").lower() if "=" in value else ""
        if _TOKEN_RE.match(unit) and unit != "bytes" and self.strict_units:
            require(status == 200, f"Range {value!r} of an unknown unit got {status}, not 200 and the whole file")
        expected = parse_range(value, size)
        if expected is None:  # not a valid bytes range: ignore it (200), refuse it (400) or 416
            require(status in (200, 206, 400, 416), f"{status} for the invalid Range {value!r}")
        elif not expected:
            require(status == 416, f"{status} for the unsatisfiable Range {value!r}")
            require(got.get("content-range") == f"bytes */{size}", "416 without Content-Range bytes */size")
        elif len(expected) == 1:
            a, b = expected[0]
            require(status == 206 and got.get("content-range") == f"bytes {a}-{b}/{size}",
                    f"{status} {got.get('content-range')} for Range {value!r}, expected bytes {a}-{b}")
        else:
            require(status in (200, 206), f"{status} for the valid multi-range {value!r}")

    def _get(self, path: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=RPC_TIMEOUT_S)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def seed_files(self) -> dict[str, bytes]:
        return {"range": b"\x00bytes=0-9", "path": b"\x01" + bytes(range(8))}


TARGETS: dict[str, Callable[[Path], Any]] = {
    "audio": AudioTarget, "video": VideoTarget, "cache": CacheTarget, "grpc": GrpcTarget, "http": HttpTarget,
}


def signature(exc: BaseException) -> str:
    """A failure's identity for counting unique ones: its type and the innermost frame of the project
    (else the innermost frame), plus the contract's message for a broken contract."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "lipsync_cli" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    # a broken contract is told apart by its message, less the case's own values (quoted, numbers)
    detail = re.sub(r"\d+", "N", re.sub(r"'[^']*'|\"[^\"]*\"", "Q", str(exc)))[:80] if isinstance(exc, ContractBroken) else ""
    return f"{type(exc).__name__} at {where} {detail}".strip()
