"""The core engine: speech samples in, one mouth image per output frame out, in one process.

The chain, in order: samples (mono float32) -> `driver` (mouth parameters per video frame) ->
`generator` (a 320x320 mouth region and where it goes) -> `MouthFrame`. Two entry points:

- `render_clip(model, samples, generator=...)`: a whole clip, lazily, frame by frame.
- `LiveEngine(model, generator)`: a stream; `push(samples)` returns the frames the new audio
  completed, `flush()` the rest at the end. Pushing a clip in any chunks gives exactly the frames
  `render_clip` gives for it. A stream whose sound is known ahead (a file played live) can follow
  that sound's `plan_mouths` instead of guessing from the spectrum.

Plain arrays only: no JPEG, no protobuf, no sockets. The gRPC services, the web bridge and the
tests all wrap these; the compositor pastes a `MouthFrame` onto its full frame.

Frame i of a clip or stream is drawn on model frame `ping_pong(first_frame + i)` and shows the
audio from `first_sample_of_frame(i)` on (the one clock, `timing.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np


from lipsync_cli.core.driver import MouthDriver, MouthParams, drive
from lipsync_cli.core.generator import AUDIO_WINDOW_SAMPLES, GeneratorStream, MouthGenerator, MouthImage
from lipsync_cli.core.timing import frame_centre_sample, ping_pong
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, StreamResampler, check_samples
from lipsync_cli.media.store import Model


@dataclass(frozen=True)
class MouthFrame:
    """The mouth of one output frame."""

    index: int  # output frame index within its clip or stream (0 = the first)
    model_frame: int  # the model video frame it is drawn on
    image: np.ndarray | None  # (S, S, 3) uint8 BGR mouth region (S = 320); None: unusable (came damaged off a wire)
    bounds: np.ndarray  # (4,) float [xmin, ymin, xmax, ymax]: where the region goes, full-frame pixels
    params: MouthParams  # what the driver decided for this frame
    captured_at_s: float = 0.0  # live: the caller's clock when the audio completing this frame was captured

    @property
    def speech(self) -> bool:
        return self.params.speech


WIRE_JPEG_QUALITY = 90  # the mouth JPEG of every wire (gRPC, both APIs, and the page's WebSocket)


def mouth_jpeg(frame: MouthFrame) -> bytes:
    """The frame's mouth image as the JPEG the wires carry (b"" when the frame has no usable image)."""
    if frame.image is None:
        return b""
    ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, WIRE_JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding of the mouth image of frame {frame.index} failed")
    return jpeg.tobytes()


def audio_window(buffer: np.ndarray, buffer_start: int, centre: int) -> np.ndarray:
    """AUDIO_WINDOW_SAMPLES of mono audio centred on sample `centre`, from `buffer` (which holds
    samples `buffer_start` on); zeros where the buffer has none."""
    out = np.zeros(AUDIO_WINDOW_SAMPLES, dtype=np.float32)
    first = centre - AUDIO_WINDOW_SAMPLES // 2
    lo, hi = max(first, buffer_start), min(first + AUDIO_WINDOW_SAMPLES, buffer_start + len(buffer))
    if hi > lo:
        out[lo - first:hi - first] = buffer[lo - buffer_start:hi - buffer_start]
    return out


class _FrameMaker:
    """Driver parameters of output frame i -> its MouthFrame, through one generator stream."""

    def __init__(self, model: Model, stream: GeneratorStream, first_frame: int):
        self.model, self.stream, self.first_frame = model, stream, first_frame

    def make(self, index: int, params: MouthParams, audio: np.ndarray, captured_at_s: float = 0.0) -> MouthFrame:
        model_frame = ping_pong(self.first_frame + index, self.model.n_frames)
        if self.model.face_found[model_frame]:
            mouth = self.stream.render(model_frame=model_frame, params=params, audio=audio)
        else:  # the tracker saw no face there (turned away, covered, out of the picture): no mouth to draw
            mouth = MouthImage(self.model.region(model_frame), self.model.mouth_bounds[model_frame])
        return MouthFrame(index=index, model_frame=model_frame, image=mouth.image,
                          bounds=np.asarray(mouth.bounds, np.float64), params=params, captured_at_s=captured_at_s)


def frames_for(model: Model, generator: MouthGenerator, params: Iterable[MouthParams], mono: np.ndarray, *,
               first_frame: int = 0, stream: GeneratorStream | None = None) -> Iterator[MouthFrame]:
    """The MouthFrame of each of `params` (frames 0, 1, ... of a clip), in order.

    mono: the whole clip, (n,) float32 at SAMPLE_RATE_HZ, for each frame's audio window. stream:
    one the generator already opened on `model`. Callers that already hold the driver's output (the
    original system's API caches it) start here.
    """
    maker = _FrameMaker(model, stream or generator.open_stream(model), first_frame)
    for i, frame_params in enumerate(params):
        centre = frame_centre_sample(i, fps=model.fps, sample_rate_hz=SAMPLE_RATE_HZ)
        yield maker.make(i, frame_params, audio_window(mono, 0, centre))


def render_clip(model: Model, samples: np.ndarray, *, generator: MouthGenerator, first_frame: int = 0,
                phonetic: bool = True) -> Iterator[MouthFrame]:
    """Every output frame of a whole clip, in order.

    samples: (n,) float32 mono at SAMPLE_RATE_HZ. first_frame: where in the model video's
    ping-pong loop the clip starts. Yields `frame_count(n)` frames, lazily. phonetic: the mouth
    follows the phones heard (a render's driver); False: the live driver, from the spectrum alone.
    """
    samples = np.asarray(samples, dtype=np.float32)
    check_samples(samples, what="the audio")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lipsync-open") as pool:
        # the generator's per-model work runs while the phones are recognised (in a process of their own)
        stream = pool.submit(generator.open_stream, model)
        params = drive(samples, fps=model.fps, phonetic=phonetic)
        return frames_for(model, generator, params, samples, first_frame=first_frame, stream=stream.result())


class PlannedMouths:
    """The mouth of every frame of a sound known in full before it plays (a file played live), worked
    out by the render's phonetic driver (`plan_mouths`).

    A live stream follows the spectral driver, which must guess the sounds from 27.5 ms of audio
    ahead; a file's phones can be heard first, as a render hears them. `at(slot)` is the planned
    mouth of output frame `slot` (frame 0 shows the sound's first sample), or None while the plan
    is not done, past the sound's end, or when it failed (`error`): the stream then follows its own
    driver.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None
        self._params: list[MouthParams] | None = None
        self._done = threading.Event()

    def done(self, params: list[MouthParams] | None, error: Exception | None = None) -> None:
        """The plan is ready (`params`, one per frame) or failed (`error`)."""
        self._params, self.error = params, error
        self._done.set()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the plan; True when it is there."""
        self._done.wait(timeout_s)
        return self._params is not None

    def at(self, slot: int) -> MouthParams | None:
        params = self._params
        if params is None or not 0 <= slot < len(params):
            return None
        return params[slot]


def plan_mouths(samples: np.ndarray, *, fps: Fraction) -> PlannedMouths:
    """The phonetic driver's mouths for (n,) float32 mono samples at SAMPLE_RATE_HZ, worked out in a
    thread of its own (a second of work per 12-20 s of speech): the plan returns at once, done later."""
    plan = PlannedMouths()
    samples = np.asarray(samples, dtype=np.float32)

    def work() -> None:
        try:
            params = drive(samples, fps=fps, phonetic=True)
        except Exception as exc:  # noqa: BLE001  (kept in the plan: the stream goes on without it)
            plan.done(None, exc)
        else:
            plan.done(params)

    threading.Thread(target=work, name="lipsync-plan", daemon=True).start()
    return plan


class LiveEngine:
    """One live stream: audio chunks in, the frames they complete out.

    sample_rate_hz: the rate of the pushed mono samples (resampled to SAMPLE_RATE_HZ inside, the
    same way whatever the chunking). A frame goes out as soon as the driver has decided it; audio
    that has not arrived yet is zeros in its generator window. offline: a frame waits until its
    whole generator window has arrived (or the stream ends), so a stream gives exactly the frames
    `render_clip` gives for its audio, with generators that look at the audio too (a streamed
    render); later by up to half a window (100 ms), and its mouth follows the phones heard (the
    render's phonetic driver: frames come a phone segment at a time, up to 5 minutes of audio).
    plan: the mouths of a sound known ahead (a played file), whose frame `plan_slot + i` is this
    stream's frame i: followed instead of the driver's, from the first frame (when the plan is done
    before the stream starts) or else from the first frame after it is done where both rest (so
    taking it up never jumps), to its end. The frames still come when the driver decides them.
    """

    def __init__(self, model: Model, generator: MouthGenerator, *, sample_rate_hz: int = SAMPLE_RATE_HZ,
                 first_frame: int = 0, offline: bool = False, plan: PlannedMouths | None = None,
                 plan_slot: int = 0):
        self.fps = model.fps
        self.resampler = StreamResampler(from_rate_hz=sample_rate_hz)
        self.driver = MouthDriver(fps=model.fps, phonetic=offline)
        self.maker = _FrameMaker(model, generator.open_stream(model), first_frame)
        self.next_index = 0
        # recent SAMPLE_RATE_HZ audio for the generator's window: samples `history_start` on
        self.history = np.zeros(0, dtype=np.float32)
        self.history_start = 0
        self.offline = offline
        self.waiting: list[MouthParams] = []  # offline: decided frames whose window is not complete yet
        self.plan, self.plan_slot = plan, plan_slot
        self.following_plan = plan is not None and plan.at(plan_slot) is not None

    def push(self, samples: np.ndarray, captured_at_s: float = 0.0) -> list[MouthFrame]:
        """The frames completed by (n,) float32 mono samples at the stream's rate (any n, 0 too).

        captured_at_s: the caller's clock when these samples were captured, stamped on the frames
        they complete (for latency).
        """
        samples = np.asarray(samples, dtype=np.float32)
        check_samples(samples, what="the audio")
        mono = self.resampler.push(samples)
        return self._frames(mono, self.driver.push(mono), captured_at_s)

    def flush(self, captured_at_s: float = 0.0) -> list[MouthFrame]:
        """End of the stream: the frames still undecided (audio past the end counts as silence)."""
        mono = self.resampler.flush()
        decided = self.driver.push(mono) + self.driver.flush()
        return self._frames(mono, decided, captured_at_s, ended=True)

    def _frames(self, mono: np.ndarray, decided: list[MouthParams], captured_at_s: float, ended: bool = False
                ) -> list[MouthFrame]:
        self.history = np.concatenate([self.history, mono])
        if self.offline:
            self.waiting += decided
            received = self.history_start + len(self.history)
            ready = 0
            while ready < len(self.waiting) and (
                    ended or self._centre(self.next_index + ready) + AUDIO_WINDOW_SAMPLES // 2 <= received):
                ready += 1
            decided, self.waiting = self.waiting[:ready], self.waiting[ready:]
        out = []
        for params in decided:
            window = audio_window(self.history, self.history_start, self._centre(self.next_index))
            out.append(self.maker.make(self.next_index, self._planned(params), window, captured_at_s))
            self.next_index += 1
        keep_from = self._centre(self.next_index) - AUDIO_WINDOW_SAMPLES // 2
        drop = min(max(0, keep_from - self.history_start), len(self.history))
        self.history, self.history_start = self.history[drop:], self.history_start + drop
        return out

    def _centre(self, index: int) -> int:
        return frame_centre_sample(index, fps=self.fps, sample_rate_hz=SAMPLE_RATE_HZ)

    def _planned(self, params: MouthParams) -> MouthParams:
        """The plan's mouth for the next frame instead of the driver's `params`, once it is followed."""
        planned = self.plan.at(self.plan_slot + self.next_index) if self.plan is not None else None
        if planned is None:
            return params
        if not self.following_plan:
            if params.speech or planned.speech:
                return params
            self.following_plan = True
        return planned
