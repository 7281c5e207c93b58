"""The core engine (`core/engine.py`) on the sample model: a clip, a live stream in odd chunks, and
RenderClip over a real gRPC server, which must all give the same frames."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import SAMPLE_SPEECH
from helpers import wait_until
from lipsync_cli.core.driver import drive
from lipsync_cli.core.engine import LiveEngine, MouthFrame, PlannedMouths, plan_mouths, render_clip
from lipsync_cli.core.generators import make_generator
from lipsync_cli.core.timing import frame_count, ping_pong
from lipsync_cli.errors import AudioError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, StreamResampler, load_audio, resample
from lipsync_cli.rpc.client import LipSyncClient
from lipsync_cli.rpc.service import create_server

CLIP_S = 3.0  # of the sample speech: speech and a pause, quick to render
CHUNK_SAMPLES = (37, 640, 4410)  # odd sizes: a frame (640 at 16 kHz) completes inside, across and between chunks
LIVE_RATES_HZ = (SAMPLE_RATE_HZ, 44_100)  # pushed as is, and resampled inside the engine
WIRE_OPEN_TOLERANCE = 1e-4  # PCM16 audio and float32 numbers on the wire (measured: about 5e-6)
# mean absolute grey-level difference a JPEG at quality 90 may add to a mouth image (measured: up to
# 1.5; consecutive frames of speech differ by about 3.4)
JPEG_TOLERANCE = 2.5


@pytest.fixture(scope="module")
def generator():
    return make_generator()


@pytest.fixture(scope="module")
def speech_16k() -> np.ndarray:
    """CLIP_S of the sample speech: (n,) float32 at SAMPLE_RATE_HZ."""
    return load_audio(SAMPLE_SPEECH).samples[: int(CLIP_S * SAMPLE_RATE_HZ)]


@pytest.fixture(scope="module")
def clip(sample_model, generator, speech_16k) -> list[MouthFrame]:
    """The clip with the live driver (from the spectrum), which a live stream must reproduce."""
    return list(render_clip(sample_model, speech_16k, generator=generator, phonetic=False))


@pytest.fixture(scope="module")
def phonetic_clip(sample_model, generator, speech_16k) -> list[MouthFrame]:
    """The clip a render gets (the phonetic driver), which an offline stream must reproduce."""
    return list(render_clip(sample_model, speech_16k, generator=generator))


def _live(model, generator, samples: np.ndarray, rate_hz: int, chunk: int, first_frame: int = 0) -> list[MouthFrame]:
    engine = LiveEngine(model, generator, sample_rate_hz=rate_hz, first_frame=first_frame)
    frames = []
    for k, start in enumerate(range(0, len(samples), chunk)):
        frames += engine.push(samples[start:start + chunk], captured_at_s=float(k))
    return frames + engine.flush(captured_at_s=-1.0)


def _same_mouths(got: list[MouthFrame], expected: list[MouthFrame], *, over_the_wire: bool) -> None:
    """Frame for frame the same; `over_the_wire`: up to what PCM16, float32 and JPEG change."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert (a.index, a.model_frame) == (b.index, b.model_frame)
        assert (a.params.shape, a.params.speech, a.params.closed) == (b.params.shape, b.params.speech,
                                                                      b.params.closed), a.index
        assert a.image is not None and a.image.shape == b.image.shape == (320, 320, 3)
        if over_the_wire:
            assert a.params.open == pytest.approx(b.params.open, abs=WIRE_OPEN_TOLERANCE), a.index
            np.testing.assert_allclose(a.bounds, b.bounds, rtol=1e-6)
            diff = np.abs(a.image.astype(np.int16) - b.image).mean()
            assert diff < JPEG_TOLERANCE, f"frame {a.index}: mean difference {diff:.2f}"
        else:
            assert a.params == b.params, a.index
            assert np.array_equal(a.bounds, b.bounds), a.index
            assert np.array_equal(a.image, b.image), f"frame {a.index}: the mouth image differs"


def test_a_clip_gives_one_frame_per_video_frame(sample_model, speech_16k, clip):
    assert len(clip) == frame_count(len(speech_16k), fps=sample_model.fps, sample_rate_hz=SAMPLE_RATE_HZ)
    assert [f.index for f in clip] == list(range(len(clip)))
    assert [f.model_frame for f in clip] == [ping_pong(i, sample_model.n_frames) for i in range(len(clip))]
    assert all(f.image.dtype == np.uint8 and f.bounds.shape == (4,) for f in clip)
    speaking = [f.speech for f in clip]
    assert any(speaking) and not all(speaking), "real speech has both speech and pauses"
    assert len({f.image.tobytes() for f in clip}) > len(clip) // 4, "the mouth moves"


@pytest.mark.parametrize("rate_hz", LIVE_RATES_HZ)
@pytest.mark.parametrize("chunk", CHUNK_SAMPLES)
def test_a_stream_in_any_chunks_gives_the_clips_frames(sample_model, generator, speech_16k, clip, rate_hz, chunk):
    if rate_hz == SAMPLE_RATE_HZ:
        pushed, expected = speech_16k, clip
    else:
        # the engine resamples a stream with StreamResampler: the clip to compare is that of its output
        pushed = resample(speech_16k, from_rate_hz=SAMPLE_RATE_HZ, to_rate_hz=rate_hz)
        whole = StreamResampler(from_rate_hz=rate_hz)
        as_16k = np.concatenate([whole.push(pushed), whole.flush()])
        expected = list(render_clip(sample_model, as_16k, generator=generator, phonetic=False))
    live = _live(sample_model, generator, pushed, rate_hz, chunk)
    # the own generator draws from the parameters alone, so even the images match
    _same_mouths(live, expected, over_the_wire=False)
    # each frame is stamped with the chunk that completed it, in order; the rest with flush's stamp
    stamps = [f.captured_at_s for f in live]
    pushed_stamps = [s for s in stamps if s >= 0]
    assert pushed_stamps == sorted(pushed_stamps) and stamps[:len(pushed_stamps)] == pushed_stamps


def test_first_frame_shifts_the_model_frames_by_ping_pong(sample_model, generator, speech_16k, clip):
    first_frame = sample_model.n_frames - 10  # the clip crosses the turn of the loop
    shifted = list(render_clip(sample_model, speech_16k, generator=generator, first_frame=first_frame,
                               phonetic=False))
    live = _live(sample_model, generator, speech_16k, SAMPLE_RATE_HZ, 640, first_frame=first_frame)
    expected = [ping_pong(first_frame + i, sample_model.n_frames) for i in range(len(clip))]
    assert [f.model_frame for f in shifted] == [f.model_frame for f in live] == expected
    assert expected != [f.model_frame for f in clip]
    assert [f.params for f in shifted] == [f.params for f in clip], "where it is drawn does not change what is said"


@pytest.mark.parametrize("chunk", [37, 4410])
def test_an_offline_stream_in_any_chunks_gives_the_rendered_clips_frames(sample_model, generator, speech_16k,
                                                                        phonetic_clip, chunk):
    engine = LiveEngine(sample_model, generator, offline=True)
    frames = [f for i in range(0, len(speech_16k), chunk) for f in engine.push(speech_16k[i:i + chunk])]
    _same_mouths(frames + engine.flush(), phonetic_clip, over_the_wire=False)


def test_a_stream_with_its_plan_ready_gives_the_rendered_clips_mouths_live(sample_model, generator, speech_16k,
                                                                          phonetic_clip, clip):
    # a played file: its phones are planned before it plays; the frames still come when the live
    # driver decides them (the same count, the same images for the same mouths), with the render's mouths
    plan = plan_mouths(speech_16k, fps=sample_model.fps)
    assert plan.wait(60.0), plan.error
    first = 7  # the stream's frame 0 is the file's frame 7 (a call that started again)
    engine = LiveEngine(sample_model, generator, plan=plan, plan_slot=first)
    frames = []
    for start in range(0, len(speech_16k), 640):
        pushed = engine.push(speech_16k[start:start + 640])
        assert len(pushed) <= 1, "one frame a frame's worth of audio, as without a plan"
        frames += pushed
    frames += engine.flush()
    assert len(frames) == len(clip)
    planned = [f.params for f in phonetic_clip[first:]]
    assert [f.params for f in frames[:len(planned)]] == planned
    # past the plan's end, the stream's own driver again
    assert [f.params for f in frames[len(planned):]] == [f.params for f in clip[len(planned):]]


def test_a_plan_done_late_is_taken_up_where_both_mouths_rest(sample_model, generator, speech_16k):
    twice = np.concatenate([speech_16k, speech_16k])  # speech, a pause, speech again, a pause
    spectral = drive(twice, fps=sample_model.fps)
    phonetic = drive(twice, fps=sample_model.fps, phonetic=True)
    plan = PlannedMouths()
    engine = LiveEngine(sample_model, generator, plan=plan)
    cut = len(speech_16k) // 5
    got = [f.params for f in engine.push(twice[:cut])]
    n = len(got)
    assert got == spectral[:n], "no plan yet: the live driver"
    plan.done(phonetic)
    got += [f.params for f in engine.push(twice[cut:]) + engine.flush()]
    assert phonetic[n].speech and spectral[n].speech, "the plan comes in the middle of speech"
    # taken up at the first frame after that where both drivers rest, and followed from there on
    up = next(k for k in range(n, len(got)) if not spectral[k].speech and not phonetic[k].speech)
    assert got[:up] == spectral[:up]
    assert got[up:] == phonetic[up:]
    assert phonetic[up:] != spectral[up:], "the second utterance's mouths are the plan's, not the live driver's"


def test_a_plan_that_fails_leaves_the_stream_its_own_driver(sample_model, generator, speech_16k, clip):
    failed = plan_mouths(np.full(SAMPLE_RATE_HZ, np.nan, np.float32), fps=sample_model.fps)
    assert not failed.wait(60.0) and isinstance(failed.error, AudioError) and failed.at(0) is None
    engine = LiveEngine(sample_model, generator, plan=failed)
    frames = [f for i in range(0, len(speech_16k), 640) for f in engine.push(speech_16k[i:i + 640])]
    assert [f.params for f in frames + engine.flush()] == [f.params for f in clip]


def test_the_render_driver_shuts_the_lips_in_speech_and_rests_in_silence(phonetic_clip, clip):
    # the phones say where P/B/M are; the gate, told where the phones are silence, where speech is
    assert any(f.params.closed and f.speech for f in phonetic_clip)
    speaking = [f.speech for f in phonetic_clip]
    assert any(speaking) and not all(speaking)
    assert all(f.params.open == 0.0 for f in phonetic_clip if not f.speech)
    # silence the live driver hears is silence to the render's too (the render's may hear more)
    assert all(not a.speech for a, b in zip(phonetic_clip, clip) if not b.speech)
    assert [f.params.open for f in phonetic_clip] != [f.params.open for f in clip]


def test_render_clip_over_grpc_is_the_engines_clip(store, sample_model, generator, speech_16k, phonetic_clip):
    server, port = create_server(store=store, generator=generator)
    try:
        with LipSyncClient(f"127.0.0.1:{port}") as client:
            remote = list(client.render_clip(sample_model.name, speech_16k, SAMPLE_RATE_HZ))
    finally:
        server.stop(grace=None)
    # over the wire: PCM16 audio, a JPEG image, float32 numbers
    _same_mouths(remote, phonetic_clip, over_the_wire=True)


# --- the live session's in-process stream (`live.stream.EngineStream`) ---------------------------

FEED_BLOCK_SAMPLES = SAMPLE_RATE_HZ // 50  # 20 ms, as a microphone's blocks


class _Gated:
    """The generator, but renders from the `hold_from`-th on wait for `go`, and all raise `fail` if set."""

    def __init__(self, inner, *, hold_from: int = 0, fail: Exception | None = None):
        self.inner, self.hold_from, self.fail = inner, hold_from, fail
        self.go = threading.Event()
        self.renders = 0

    def open_stream(self, model):
        stream, gate = self.inner.open_stream(model), self

        class Stream:
            def render(self, **kwargs):
                if gate.fail is not None:
                    raise gate.fail
                gate.renders += 1
                if gate.renders > gate.hold_from:
                    gate.go.wait(30)
                return stream.render(**kwargs)
        return Stream()


def _feed(lip, samples: np.ndarray, start: int) -> int:
    for k in range(0, len(samples), FEED_BLOCK_SAMPLES):
        lip.feed(samples[k:k + FEED_BLOCK_SAMPLES], start + k, float(start + k))
    return start + len(samples)


def _arrivals(lip, count: int) -> list:
    got = []
    while len(got) < count:
        got.append(lip.frames.get(timeout=30))
    return got


def test_the_in_process_live_stream_gives_the_engines_mouths_on_their_slots(sample_model, generator, speech_16k,
                                                                          clip):
    from lipsync_cli.live.stream import EngineStream

    lip = EngineStream(sample_model, generator, rate_hz=SAMPLE_RATE_HZ)
    with lip:
        _feed(lip, speech_16k, 0)
        # a live stream never ends: the last frames wait for audio past the clip (the driver's lookahead)
        got = _arrivals(lip, len(clip) - 3)
    assert [a.slot for a in got] == list(range(len(got)))
    assert [a.mouth.captured_at_s for a in got] == sorted(a.mouth.captured_at_s for a in got)
    _same_mouths([a.mouth for a in got], clip[:len(got)], over_the_wire=False)
    assert lip.error is None and lip.lost == 0 and not lip.away(got[-1].arrived_at_s)


def test_a_stuck_in_process_stream_starts_again_at_the_next_frame_boundary(sample_model, generator, speech_16k):
    from lipsync_cli.live.stream import STREAM_QUEUE_BLOCKS, EngineStream

    gated = _Gated(generator, hold_from=5)  # the engine hangs on its sixth frame...
    lip = EngineStream(sample_model, gated, rate_hz=SAMPLE_RATE_HZ)
    fps = sample_model.fps
    with lip:
        fed = _feed(lip, speech_16k[:SAMPLE_RATE_HZ], 0)
        first = _arrivals(lip, 5)
        assert wait_until(lambda: gated.renders > 5)
        # ...while the audio goes on past what its queue holds
        fed = _feed(lip, np.zeros((STREAM_QUEUE_BLOCKS + 10) * FEED_BLOCK_SAMPLES, np.float32), fed)
        overflow_slot = frame_count(fed, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)
        gated.go.set()
        later: list = []
        k = 0
        while len([a for a in later if a.slot >= overflow_slot]) < 5:  # the audio goes on, in real time
            fed = _feed(lip, speech_16k[k:k + FEED_BLOCK_SAMPLES], fed)
            k = (k + FEED_BLOCK_SAMPLES) % (len(speech_16k) - FEED_BLOCK_SAMPLES)
            time.sleep(0.005)
            while not lip.frames.empty():
                later.append(lip.frames.get())
            assert len(later) < 2000, "no mouths after the stuck call"
    assert [a.slot for a in first] == [0, 1, 2, 3, 4]
    stuck = [a.slot for a in later if a.slot < overflow_slot]
    new = [a.slot for a in later if a.slot >= overflow_slot]
    # the hung push finishes, the rest of the stuck call's audio is dropped, and a new call begins at a
    # frame boundary after the audio fed so far, its frames following on, each on its own model frame
    assert stuck in ([5], [5, 6]), stuck
    assert new == list(range(new[0], new[0] + len(new))) and new[0] <= frame_count(fed, fps=fps,
                                                                                  sample_rate_hz=SAMPLE_RATE_HZ)
    for a in later:
        assert a.mouth.model_frame == ping_pong(a.slot, sample_model.n_frames), a.slot
    assert lip.error is None


def test_a_failing_in_process_stream_hands_its_error_to_the_session(sample_model, generator, speech_16k):
    from lipsync_cli.live.stream import EngineStream

    gated = _Gated(generator, fail=RuntimeError("the generator broke"))
    lip = EngineStream(sample_model, gated, rate_hz=SAMPLE_RATE_HZ)
    with lip:
        _feed(lip, speech_16k[:SAMPLE_RATE_HZ], 0)
        assert wait_until(lambda: lip.error is not None)
    assert str(lip.error) == "the generator broke" and lip.frames.empty()
