"""The mouth driver: speech audio -> per video frame mouth parameters, weight-free and streaming.

The driver is a chain of stages, in the order they run (MouthDriver wires them):

  samples -> HopAnalyser (10 ms hop measures, core/hops.py)
          -> SpeechGate (stage 1: which hops are speech, core/hops.py)
          -> TargetTracker (stage 2: the mouth each hop asks for, core/hops.py)
          -> FrameSmoother (stage 3: one MouthParams per video frame, here)

Each hop gets a few spectral measures (band levels in dB and spectral centroids); running trackers
turn them into speech/silence and mouth targets that do not depend on the recording's gain:

- speech: a hop is loud enough above the noise floor (the quietest hop of the last 1.5 s), in a
  run long enough to be voice and not a click; gaps shorter than a stop closure are bridged.
- open: the level of the first-formant band (where open vowels put their energy) relative to a
  running high quantile of that level in speech, lowered when that band holds little of the
  spectrum (closed vowels, consonants). Loudness changes the level and its quantile alike, so the
  same speech 20 dB quieter opens the mouth the same.
- wide / round: where the spectrum's centroids sit against this speaker's running averages (front
  vowels and sibilants high, rounded vowels low).
- closed: a voiced hop (murmur of M, voice bar of B) with almost no first-formant energy, no
  sibilant hiss, and the second formant pulled down as lips do.

Each video frame then follows a coarticulated target (the hop targets around its sound time plus
LEAD_MS, weighted by dominance: vowel nuclei and closures pull harder than the consonants between)
with a critically damped second-order follower whose speed and acceleration are bounded, the way
lips with mass move. P/B/M closures stay sharp (a closure shuts the lips in its frame, even a
single one, and the frame before it heads for shut), and silence is REST at once. Only a fixed
amount of audio past a frame is needed (`lookahead_ms`), and `push` on any chunking gives exactly
the frames `drive` gives on the whole clip.

Limits: the shapes G (F/V) and H (L) need the phone's identity and are never chosen; audio that
starts mid-vowel with nothing quieter before it is taken as speech only from its first dip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from lipsync_cli.core.hops import (
    HOP_MS,
    SILENT_TARGET,
    HopAnalyser,
    HopSeries,
    HopTarget,
    SpeechGate,
    TargetTracker,
)
from lipsync_cli.core.timing import first_sample_of_frame, frame_count
from lipsync_cli.errors import AudioError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, check_samples

ANTICIPATION_MS = 20  # a frame, from when it appears, shows the mouth of the sound this much later
AHEAD_MS = 50  # audio analysed past a frame's sound time before the frame is decided
LEAD_MS = 20  # the target a frame follows is centred this far past its sound time: lips shape a
# sound before it is heard, and the follower below lags its target by about as much
BLEND_BACK_MS = 40  # the coarticulation blend reads hops this far before its centre (and after it, all
# the audio the frame may read: up to AHEAD_MS past its sound time)
DOMINANCE_DECAY_MS = 20  # a hop's pull on the blend falls e-fold over this distance from it
DOMINANCE_OPEN = 2.0  # a hop at full opening pulls this much harder than a consonant (vowel nuclei dominate)
DOMINANCE_CLOSURE = 6.0  # ... and a P/B/M closure this much harder: the lips must meet
NATURAL_HZ = 7.0  # the critically damped follower's natural frequency (syllables come at 3-6 Hz)
MAX_LIP_SPEED_PER_S = 4.0  # full ranges per second, for open, wide and round: 0.16 per 25 fps frame,
# which keeps the 95th percentile step near a quarter of the range (people filmed talking: 0.20-0.35)
MAX_LIP_ACCEL_PER_S2 = 200.0  # full ranges per second squared: a step changes by at most 0.32 per 25 fps frame
SHUT_TARGET = 0.1  # a target under this means lips together (hops.CLOSED_BELOW_OPEN): the follower then
LIPS_PRESS = 0.1  # aims this far past touching, so it gets there in finite time instead of creeping to 0
HOLD_MS = 70  # a shape letter is held at least this long (closures and silence excepted)


@dataclass(frozen=True)
class MouthParams:
    """The mouth to show in one video frame."""

    open: float  # 0 = lips together .. 1 = as wide as this person plausibly opens in normal speech
    wide: float  # 0..1 lips spread (EE, S, smile-like)
    round: float  # 0..1 lips rounded/pushed forward (OO, W, O)
    closed: bool  # lips pressed together (P/B/M closure); open is 0.0 when True
    speech: bool  # speech is present in this frame
    shape: str  # Rhubarb letter: A closed (P/B/M), B slightly open (most consonants), C open (EH,
    # AE), D wide open (AA), E slightly rounded (AO, ER), F puckered (UW, OW, W), G F/V, H L, X rest


REST = MouthParams(0.0, 0.0, 0.0, False, False, "X")


class FrameHops(NamedTuple):
    """The hops one video frame reads, as absolute hop indices (hop k starts at k * HOP_MS)."""

    centre: int  # the hop whose sound the frame shows: ANTICIPATION_MS after the frame appears
    next_centre: int  # the same for the next frame
    last: int  # the latest hop the frame may read: AHEAD_MS past its centre


def frame_hops(frame_index: int, *, fps: Fraction, sample_rate_hz: int) -> FrameHops:
    """Which hops video frame `frame_index` reads, at this frame rate and sample rate."""
    hop = sample_rate_hz * HOP_MS // 1000
    anticipation = sample_rate_hz * ANTICIPATION_MS // 1000

    def centre(i: int) -> int:
        return (first_sample_of_frame(i, fps=fps, sample_rate_hz=sample_rate_hz) + anticipation) // hop

    c = centre(frame_index)
    return FrameHops(c, centre(frame_index + 1), c + AHEAD_MS // HOP_MS)


class Follower:
    """A critically damped second-order follower of one mouth parameter, one step per video frame.

    Two equal first-order lags in a row (a double pole at exp(-2 pi NATURAL_HZ / fps)): the
    response to a jump of the target builds up speed, never overshoots, and settles in about
    1 / NATURAL_HZ. On top, the step per frame is kept within max_step, the change of step within
    max_accel, and the speed toward the target within what max_accel can stop before it, so
    neither speed nor acceleration exceeds a lip's whatever the targets do. The value stays in
    0..1; a target under SHUT_TARGET is aimed LIPS_PRESS past 0, and reaching 0 stops it there
    (lips meeting stop each other: the one place the acceleration limit gives way).
    """

    def __init__(self, *, pole: float, max_step: float, max_accel: float) -> None:
        self.pole, self.max_step, self.max_accel = pole, max_step, max_accel
        self.intent = self.value = self.step = 0.0  # first lag, output, last step

    def follow(self, target: float, *, brake: bool = False) -> float:
        """One frame toward target; brake: the acceleration limit is lifted (lips about to shut)."""
        if target < SHUT_TARGET:
            target = -LIPS_PRESS
        self.intent = self.pole * self.intent + (1 - self.pole) * target
        wanted = self.pole * self.value + (1 - self.pole) * self.intent - self.value
        if not brake:
            # no faster toward the target than lets it stop there at max_accel, then the acceleration limit
            reach = math.sqrt(2 * self.max_accel * abs(target - self.value))
            wanted = min(max(wanted, -reach), reach)
            wanted = min(max(wanted, self.step - self.max_accel), self.step + self.max_accel)
        self.step = min(max(wanted, -self.max_step), self.max_step)
        value = self.value + self.step
        if not 0.0 <= value <= 1.0:  # the lips meet (or the jaw is at its widest): they stop there
            value = min(max(value, 0.0), 1.0)
            self.step = value - self.value
            self.intent = min(max(self.intent, 0.0), 1.0)
        self.value = value
        return self.value

    def stop_at(self, value: float) -> None:
        """Put the parameter at `value`, at rest (a closure, silence)."""
        self.intent = self.value = value
        self.step = 0.0


class FrameSmoother:
    """Stage 3: hop targets -> one MouthParams per video frame, moving the way real lips move.

    Coarticulation: each frame's target is a blend of the hop targets around its sound time plus
    LEAD_MS, each hop weighted by its dominance (vowel nuclei and closures pull harder than the
    consonants between them) falling off with distance. Mass: a critically damped follower per
    parameter (`Follower`) moves toward that target with bounded speed and acceleration. A P/B/M
    closure shuts the lips in its frame, even a single one, and the frame before it, which already
    hears it, heads for shut without the acceleration limit; the end of speech is approached the
    same way, and silence is REST at once. Shape letters are held at least HOLD_MS.
    """

    def __init__(self, *, fps: Fraction) -> None:
        self.lead_hops = LEAD_MS // HOP_MS
        self.back_hops = BLEND_BACK_MS // HOP_MS
        self.decay_hops = DOMINANCE_DECAY_MS / HOP_MS
        self.hold_frames = max(1, math.ceil(HOLD_MS / 1000 * float(fps)))
        rate = float(fps)
        pole = math.exp(-2 * math.pi * NATURAL_HZ / rate)
        self.followers = [Follower(pole=pole, max_step=MAX_LIP_SPEED_PER_S / rate,
                                   max_accel=MAX_LIP_ACCEL_PER_S2 / rate ** 2) for _ in range(3)]
        # the hops before the audio starts are silence, so the first frames see a full window
        pad = self.back_hops + 1
        self.targets: HopSeries[HopTarget] = HopSeries(first=-pad, values=[SILENT_TARGET] * pad)
        self.shape = "X"
        self.shape_frames = 0

    def add(self, target: HopTarget) -> None:
        """The next hop's target (hops come in order, from hop 0)."""
        self.targets.append(target)

    def frame(self, hops: FrameHops, *, speech: bool, next_speech: bool) -> MouthParams:
        """The next frame's mouth; the targets of hops up to hops.last must have been added.

        speech / next_speech: whether speech is on at this frame's centre hop and the next's.
        """
        k, k_next, last_hop = hops
        # later frames read no hop before their own window, nor before their closure test
        self.targets.forget_before(min(k - 1, k + self.lead_hops - self.back_hops))
        open_f, wide_f, round_f = self.followers
        if not speech:
            for f in self.followers:
                f.stop_at(0.0)
            self._hold_shape("X")
            return REST
        target, wide, round_ = self._blend(k + self.lead_hops, last_hop)
        closed = self._closure_at(k)
        # the next frame shuts the lips (a closure, the end of speech) and its audio is already here
        next_shut = k_next + 1 <= last_hop and (not next_speech or self._closure_at(k_next))
        wide_f.follow(wide)
        round_f.follow(round_)
        if closed:
            open_f.stop_at(0.0)
        else:
            open_f.follow(0.0 if next_shut else target, brake=next_shut)
        shape = self._hold_shape(_shape(open_f.value, round_f.value, closed))
        return MouthParams(open_f.value, wide_f.value, round_f.value, closed, True, shape)

    def _blend(self, centre_hop: int, last_hop: int) -> tuple[float, float, float]:
        """Dominance-weighted means of (open, wide, round) over the hops around centre_hop, up to last_hop."""
        open_ = wide = round_ = weight_sum = 0.0
        for k in range(centre_hop - self.back_hops, last_hop + 1):
            t = self.targets[k]
            dominance = 1.0 + DOMINANCE_OPEN * t.open + DOMINANCE_CLOSURE * t.closure
            w = dominance * math.exp(-abs(k - centre_hop) / self.decay_hops)
            open_ += w * t.open
            wide += w * t.wide
            round_ += w * t.round
            weight_sum += w
        return open_ / weight_sum, wide / weight_sum, round_ / weight_sum

    def _closure_at(self, hop: int) -> bool:
        """Lips shut around this hop: most of the three hops centred on it say so."""
        return sum(self.targets[k].closure for k in range(hop - 1, hop + 2)) >= 2

    def _hold_shape(self, shape: str) -> str:
        """Keep each shape on screen at least HOLD_MS; closures and silence change at once."""
        urgent = shape in "AX" or self.shape in "AX"
        if shape != self.shape and (urgent or self.shape_frames >= self.hold_frames):
            self.shape, self.shape_frames = shape, 0
        self.shape_frames += 1
        return self.shape


def _shape(open_: float, round_: float, closed: bool) -> str:
    """The Rhubarb letter closest to these parameters of a speech frame."""
    if closed:
        return "A"
    if round_ > 0.5:
        return "F" if open_ < 0.35 else "E"
    if open_ >= 0.7:
        return "D"
    if open_ >= 0.35:
        return "C"
    return "B"


class MouthDriver:
    """Streaming mouth driver: push mono audio in any chunks, get the frames it decides.

    fps: output video frame rate (exact, e.g. Fraction(30000, 1001)).
    sample_rate_hz: rate of the pushed samples; a multiple of 100 Hz, at least 16 kHz.
    """

    def __init__(self, *, fps: Fraction, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        fps = Fraction(fps)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if sample_rate_hz < SAMPLE_RATE_HZ or sample_rate_hz % 100:
            raise AudioError(
                f"the mouth driver needs at least {SAMPLE_RATE_HZ} Hz in whole hundreds, got {sample_rate_hz} Hz:"
                " resample first (lipsync_cli.media.audio.resample)"
            )
        self.fps = fps
        self.sample_rate_hz = sample_rate_hz
        self.analyser = HopAnalyser(sample_rate_hz)
        self.gate = SpeechGate()
        self.tracker = TargetTracker()
        self.smoother = FrameSmoother(fps=fps)
        self.samples_in = 0  # pushed
        self.samples_fed = 0  # pushed, plus the silence flush adds
        self.frames_out = 0

    @property
    def lookahead_ms(self) -> float:
        """How far past a frame's end audio must have arrived before that frame is decided (ms)."""
        # the audio frame i needs ends at most at frame i's start + anticipation + AHEAD_MS + one
        # hop's analysis reach, and frame i is at least this many samples long
        shortest_frame = self.sample_rate_hz * self.fps.denominator // self.fps.numerator
        anticipation = self.sample_rate_hz * ANTICIPATION_MS // 1000
        ahead = AHEAD_MS // HOP_MS * self.analyser.hop
        worst = anticipation + ahead + self.analyser.reach - shortest_frame
        return 1000 * worst / self.sample_rate_hz

    def _frame_hops(self, frame_index: int) -> FrameHops:
        return frame_hops(frame_index, fps=self.fps, sample_rate_hz=self.sample_rate_hz)

    def push(self, samples: np.ndarray) -> list[MouthParams]:
        """Feed (n,) float32 mono samples at sample_rate_hz (any n, 0 too); return newly decided frames."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioError(f"the mouth driver takes mono (n,) samples, got shape {samples.shape}")
        check_samples(samples, what="audio pushed to the mouth driver")
        self.samples_in += len(samples)
        return self._feed(samples, frame_count(self.samples_in, fps=self.fps, sample_rate_hz=self.sample_rate_hz))

    def flush(self) -> list[MouthParams]:
        """End of audio: return the remaining frames (audio past the end counts as silence)."""
        total = frame_count(self.samples_in, fps=self.fps, sample_rate_hz=self.sample_rate_hz)
        if self.frames_out >= total:
            return []
        needed = self.analyser.samples_needed(self._frame_hops(total - 1).last)
        return self._feed(np.zeros(max(0, needed - self.samples_fed), dtype=np.float32), total)

    def _feed(self, samples: np.ndarray, total_frames: int) -> list[MouthParams]:
        """Run the chain: hops through the gate and the tracker, then every frame now decidable."""
        self.samples_fed += len(samples)
        for hop in self.analyser.feed(samples):
            loud = self.gate.push(hop.hop_db)
            self.smoother.add(self.tracker.step(hop, loud=loud))
        out = []
        while self.frames_out < total_frames:
            hops = self._frame_hops(self.frames_out)
            if self.analyser.samples_needed(hops.last) > self.samples_fed:
                break
            out.append(self._frame(hops))
            self.frames_out += 1
        return out

    def _frame(self, hops: FrameHops) -> MouthParams:
        # only what the hops up to hops.last tell counts, so chunking cannot change a frame
        settled = self.gate.settled_through(hops.last)
        speech = self.gate.speech_on(hops.centre)
        next_speech = self.gate.speech_on(hops.next_centre, seen_through=settled)
        self.gate.forget_before(hops.centre)  # later frames ask about later hops only
        return self.smoother.frame(hops, speech=speech, next_speech=next_speech)


def drive(samples: np.ndarray, *, fps: Fraction, sample_rate_hz: int = SAMPLE_RATE_HZ) -> list[MouthParams]:
    """Mouth parameters for a whole clip: (n,) float32 mono at sample_rate_hz -> frame_count(n) frames."""
    driver = MouthDriver(fps=fps, sample_rate_hz=sample_rate_hz)
    return driver.push(samples) + driver.flush()
