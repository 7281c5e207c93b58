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

A render uses the same chain with `phonetic=True`: stage 2's targets come from the phones heard
(core/phones.py), the lips move as PHONETIC_MOTION (core/motion.py) and each frame reads
PHONETIC_AHEAD_MS ahead, so the opening is kept within what lip speed can close before the next
closure or pause. A phone heard far under the running speech level or under the clip's loudest
(a breath, a word's fading tail) opens less, down to rest, and counts as a pause.

Limits (live): the shapes G (F/V) and H (L) need the phone's identity and are never chosen; audio that
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
    voice_share,
)
from lipsync_cli.core.motion import LIVE_MOTION, PHONETIC_MOTION, Follower, Motion
from lipsync_cli.core.phones import PHONE_SAMPLE_RATE_HZ, SILENCE, PhoneLabeller, is_phone, phone_target
from lipsync_cli.core.timing import first_sample_of_frame, frame_count
from lipsync_cli.errors import AudioError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, check_samples

ANTICIPATION_MS = 20  # a frame, from when it appears, shows the mouth of the sound this much later
AHEAD_MS = 30  # audio analysed past a frame's sound time before the frame is decided (live): the least the
# speech gate needs to settle a hop (MIN_SPEECH_RUN_MS - 10); 50 ms measured the same (viseme AUC
# within 0.01 on five recordings) and cost the microphone 20 ms more latency
PHONETIC_AHEAD_MS = 400  # the render's driver reads this far ahead: a wide-open mouth (open 1) takes
# about as long to close at PHONETIC_MOTION's speed, so the lips reach a closure or the end of speech
# in time instead of snapping shut
LEAD_MS = 20  # the target a frame follows is centred this far past its sound time: lips shape a
# sound before it is heard, and the follower below lags its target by about as much
BLEND_BACK_MS = 40  # the coarticulation blend reads hops this far before its centre (and after it, all
# the audio the frame may read: up to AHEAD_MS past its sound time)
DOMINANCE_DECAY_MS = 20  # a hop's pull on the blend falls e-fold over this distance from it
DOMINANCE_OPEN = 2.0  # a hop at full opening pulls this much harder than a consonant (vowel nuclei dominate)
DOMINANCE_CLOSURE = 6.0  # ... and a P/B/M closure this much harder: the lips must meet
FAINT_BELOW_PEAK_DB = 36.0  # render: a hop this far under the clip's loudest is heard as silence, even in soft
# speech whose own running level has followed it down (a quiet talker after a loud one)
FAINT_PEAK_RAMP_DB = 6.0  # ... and opens in full from this much louder
PEAK_PERCENTILE = 99.5  # the clip's loudest: this percentile of its hops' levels, so one click does not set it
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
    last: int  # the latest hop the frame may read: ahead_ms (AHEAD_MS live) past its centre


def frame_hops(frame_index: int, *, fps: Fraction, sample_rate_hz: int, ahead_ms: int = AHEAD_MS) -> FrameHops:
    """Which hops video frame `frame_index` reads, at this frame rate and sample rate."""
    hop = sample_rate_hz * HOP_MS // 1000
    anticipation = sample_rate_hz * ANTICIPATION_MS // 1000

    def centre(i: int) -> int:
        return (first_sample_of_frame(i, fps=fps, sample_rate_hz=sample_rate_hz) + anticipation) // hop

    c = centre(frame_index)
    return FrameHops(c, centre(frame_index + 1), c + ahead_ms // HOP_MS)


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

    def __init__(self, *, fps: Fraction, motion: Motion = LIVE_MOTION) -> None:
        self.lead_hops = LEAD_MS // HOP_MS
        self.back_hops = BLEND_BACK_MS // HOP_MS
        self.decay_hops = DOMINANCE_DECAY_MS / HOP_MS
        self.hold_frames = max(1, math.ceil(HOLD_MS / 1000 * float(fps)))
        rate = float(fps)
        pole = math.exp(-2 * math.pi * motion.natural_hz / rate)
        self.followers = [Follower(pole=pole, max_step=motion.max_speed_per_s / rate,
                                   max_accel=motion.max_accel_per_s2 / rate ** 2) for _ in range(3)]
        # the hops before the audio starts are silence, so the first frames see a full window
        pad = self.back_hops + 1
        self.targets: HopSeries[HopTarget] = HopSeries(first=-pad, values=[SILENT_TARGET] * pad)
        self.shape = "X"
        self.shape_frames = 0

    def add(self, target: HopTarget) -> None:
        """The next hop's target (hops come in order, from hop 0)."""
        self.targets.append(target)

    def frame(self, hops: FrameHops, *, speech: bool, next_speech: bool, shut_in: int | None = None
              ) -> MouthParams:
        """The next frame's mouth; the targets of hops up to hops.last must have been added.

        speech / next_speech: whether speech is on at this frame's centre hop and the next's.
        shut_in: when known (a driver reading far ahead), the lips shut that many frames from now
        (a closure, the end of speech): the opening is kept within what lip speed can close by then.
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
        target, wide, round_ = self._blend(k + self.lead_hops, min(last_hop, k + AHEAD_MS // HOP_MS))
        closed = self.closure_at(k)
        # the next frame shuts the lips (a closure, the end of speech) and its audio is already here
        next_shut = k_next + 1 <= last_hop and (not next_speech or self.closure_at(k_next))
        if shut_in is not None:
            target = min(target, (shut_in - 1) * open_f.max_step)
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

    def closure_at(self, hop: int) -> bool:
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
    phonetic: the hop targets come from the phones heard (core/phones.py) instead of the spectrum
    (TargetTracker); needs 16 kHz, and a frame waits for the phone segment around it (up to
    5 minutes of audio): for renders, not live.
    """

    def __init__(self, *, fps: Fraction, sample_rate_hz: int = SAMPLE_RATE_HZ, phonetic: bool = False) -> None:
        fps = Fraction(fps)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if sample_rate_hz < SAMPLE_RATE_HZ or sample_rate_hz % 100:
            raise AudioError(
                f"the mouth driver needs at least {SAMPLE_RATE_HZ} Hz in whole hundreds, got {sample_rate_hz} Hz:"
                " resample first (lipsync_cli.media.audio.resample)"
            )
        if phonetic and sample_rate_hz != PHONE_SAMPLE_RATE_HZ:
            raise AudioError(f"the phonetic mouth driver needs {PHONE_SAMPLE_RATE_HZ} Hz, got {sample_rate_hz} Hz")
        self.fps = fps
        self.sample_rate_hz = sample_rate_hz
        self.labeller = PhoneLabeller() if phonetic else None
        self.labels: HopSeries[str] = HopSeries(first=0)  # phonetic: the label of each hop labelled so far
        self.faint: HopSeries[bool] = HopSeries(first=0)  # phonetic: each hop's phone is heard as silence
        self.peak_db: float | None = None  # phonetic: the loudest of the segments heard so far (whole-band dB)
        self.hops_in = 0  # analysed
        self.analyser = HopAnalyser(sample_rate_hz)
        self.gate = SpeechGate()
        self.tracker = TargetTracker()
        self.smoother = FrameSmoother(fps=fps, motion=PHONETIC_MOTION if phonetic else LIVE_MOTION)
        self.ahead_ms = PHONETIC_AHEAD_MS if phonetic else AHEAD_MS
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
        ahead = self.ahead_ms // HOP_MS * self.analyser.hop
        worst = anticipation + ahead + self.analyser.reach - shortest_frame
        return 1000 * worst / self.sample_rate_hz

    def _frame_hops(self, frame_index: int) -> FrameHops:
        return frame_hops(frame_index, fps=self.fps, sample_rate_hz=self.sample_rate_hz, ahead_ms=self.ahead_ms)

    def push(self, samples: np.ndarray) -> list[MouthParams]:
        """Feed (n,) float32 mono samples at sample_rate_hz (any n, 0 too); return newly decided frames."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AudioError(f"the mouth driver takes mono (n,) samples, got shape {samples.shape}")
        check_samples(samples, what="audio pushed to the mouth driver")
        self.samples_in += len(samples)
        if self.labeller is not None:
            samples = self._labelled(*self.labeller.push(samples))
        return self._feed(samples, frame_count(self.samples_in, fps=self.fps, sample_rate_hz=self.sample_rate_hz))

    def flush(self) -> list[MouthParams]:
        """End of audio: return the remaining frames (audio past the end counts as silence)."""
        total = frame_count(self.samples_in, fps=self.fps, sample_rate_hz=self.sample_rate_hz)
        out = []
        if self.labeller is not None:
            out = self._feed(self._labelled(*self.labeller.flush()), total)
        if self.frames_out >= total:
            return out
        needed = self.analyser.samples_needed(self._frame_hops(total - 1).last)
        return out + self._feed(np.zeros(max(0, needed - self.samples_fed), dtype=np.float32), total)

    def _labelled(self, samples: np.ndarray, labels: list[str]) -> np.ndarray:
        for label in labels:
            self.labels.append(label)
        return samples

    def _label(self) -> str | None:
        """Phonetic: the label of the hop being analysed (None: the live driver has none)."""
        if self.labeller is None:
            return None
        index = self.hops_in
        label = self.labels[index] if index < self.labels.end else SILENCE  # past the end: the flush's silence
        self.labels.forget_before(index)
        return label

    def _feed(self, samples: np.ndarray, total_frames: int) -> list[MouthParams]:
        """Run the chain: hops through the gate and the tracker, then every frame now decidable."""
        self.samples_fed += len(samples)
        measures = self.analyser.feed(samples)
        if self.labeller is not None and len(measures):
            # a segment's hops all come at once, before any of its frames is decided
            loudest = float(np.percentile(measures.total_db, PEAK_PERCENTILE))
            self.peak_db = loudest if self.peak_db is None else max(self.peak_db, loudest)
        for hop in measures:
            label = self._label()
            # stages 1 and 2; phonetic: a hop the labeller heard as silence or noise is no speech,
            # and the target comes from the phone instead of the spectrum
            loud = self.gate.push(hop.hop_db, voice=label is None or is_phone(label))
            target = self.tracker.step(hop, loud=loud)
            if label is not None:  # a faint phone (a breath, a word's fading tail) opens less, down to rest
                phone = phone_target(label)
                share = min(self.tracker.voiced_share(hop), _share_under_peak(hop.total_db, self.peak_db))
                target = phone._replace(open=phone.open * share)
                self.faint.append(share == 0.0)
            self.smoother.add(target)
            self.hops_in += 1
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
        shut_in = self._shut_in(hops, settled) if self.ahead_ms > AHEAD_MS else None
        self.gate.forget_before(hops.centre)  # later frames ask about later hops only
        self.faint.forget_before(min(hops.centre, self.faint.end))
        return self.smoother.frame(hops, speech=speech, next_speech=next_speech, shut_in=shut_in)

    def _shut_in(self, hops: FrameHops, settled: int) -> int | None:
        """In how many frames the lips shut (silence or a closure), among those the audio read so far tells."""
        for ahead in range(2, self.fps.numerator):  # the next frame is the smoother's own business
            centre = self._frame_hops(self.frames_out + ahead).centre
            if centre > settled or centre + 1 > hops.last:
                return None
            if not self.gate.speech_on(centre, seen_through=centre) or self.smoother.closure_at(centre):
                return ahead
            if centre < self.faint.end and self.faint[centre]:  # a phone heard as silence: the lips are shut by then
                return ahead
        return None


def _share_under_peak(level_db: float, peak_db: float | None) -> float:
    """0..1: how much a hop this loud is heard as voice against the loudest of the clip."""
    if peak_db is None:
        return 1.0
    return voice_share(level_db, peak_db, below_db=FAINT_BELOW_PEAK_DB, ramp_db=FAINT_PEAK_RAMP_DB)


def drive(samples: np.ndarray, *, fps: Fraction, sample_rate_hz: int = SAMPLE_RATE_HZ, phonetic: bool = False
          ) -> list[MouthParams]:
    """Mouth parameters for a whole clip: (n,) float32 mono at sample_rate_hz -> frame_count(n) frames."""
    driver = MouthDriver(fps=fps, sample_rate_hz=sample_rate_hz, phonetic=phonetic)
    return driver.push(samples) + driver.flush()
