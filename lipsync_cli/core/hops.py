"""The mouth driver's per-hop half: audio -> 10 ms hop measures -> speech gate -> hop targets.

- `HopAnalyser`: each hop gets its own level and, from a 25 ms Hann window centred on it, the
  levels of a few bands (first formant, sibilant hiss, everything) and two spectral centroids,
  as a `HopMeasures` record of arrays.
- `SpeechGate` (stage 1): which hops are speech, against a running noise floor.
- `TargetTracker` (stage 2): the mouth each hop asks for (`HopTarget`), against the running
  speech level and this speaker's average centroids, so the gain of the recording does not matter.

The per-frame half (the frame smoother) and the wiring are in core/driver.py. `HopSeries` holds
per-hop values by absolute hop index for the stages that read them after the hop has passed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lipsync_cli.core.region import smoothstep

HOP_MS = 10  # analysis step
WINDOW_MS = 25  # spectral analysis window, centred on each hop
F1_BAND_HZ = (450, 1200)  # first formant of open vowels
F2_CENTROID_BAND_HZ = (1000, 4000)  # front vowels high, rounded vowels low
ALL_CENTROID_BAND_HZ = (300, 3500)
HIGH_BAND_HZ = (4000, 8000)  # sibilant hiss
TOTAL_BAND_HZ = (60, 8000)
TINY_POWER = 1e-12  # keeps log10 finite on digital silence

MIN_SPEECH_RUN_MS = 40  # louder-than-floor runs shorter than this are clicks, not speech
HANGOVER_MS = 100  # gaps shorter than this inside speech (stop closures) stay speech
NOISE_WINDOW_MS = 1500  # the noise floor is the quietest hop in this much recent audio
NOISE_BLOCK_MS = 100  # ... kept as per-block minima so the sliding minimum is cheap
GATE_MARGIN_DB = 9.0  # a hop is voice-loud when this far above the noise floor
SILENCE_FLOOR_DBFS = -85.0  # below this nothing is speech (digital silence, dither)

LEVEL_QUANTILE = 0.9  # the speech level tracks this quantile of first-formant band levels
LEVEL_STEP_UP_DB = 1.0  # per hop; the step down follows from the quantile
LEVEL_WARMUP_MS = 300  # during the first speech the level jumps straight to new peaks
CENTROID_RATE = 0.01  # per vowel hop, for the speaker's average spectral centroids
VOWEL_BELOW_LEVEL_DB = 15.0  # a loud hop with its first-formant band this close to the level is a vowel
F2_CENTROID_PRIOR_HZ = 1800.0  # typical adult averages, until this speaker's are known
ALL_CENTROID_PRIOR_HZ = 800.0
OPEN_AT_SPEECH_LEVEL = 0.9  # a vowel at the running speech level opens this much
OPEN_PER_DB = 0.04  # each dB of first-formant level adds this much openness
OPEN_SHARE_DB = -3.0  # an open vowel's first-formant band holds about this share of the spectrum
OPEN_PER_SHARE_DB = 0.02  # each dB of share under that closes the mouth this much
CLOSED_BELOW_OPEN = 0.1  # a voiced hop whose openness comes out under this has the lips shut
LIPS_APART_OPEN = 0.15  # in speech the lips part on every sound but P/B/M: a loud hop whose level
LIPS_APART_WITHIN_DB = 12.0  # is within this much of the speech level (voice, not a breath) opens at
# least LIPS_APART_OPEN, so that the lips together mean a closure or silence, as on a person
SIBILANT_ABOVE_TOTAL_DB = -6.0  # high band within this much of the total level: a hiss, not closed
FAINT_BELOW_LEVEL_DB = 30.0  # a phone whose whole spectrum lies this far under the speech level is a breath or
FAINT_RAMP_DB = 10.0  # a fading tail, heard as silence: its lips rest; from this much louder they open in full
WIDE_AT_AVERAGE = 0.3  # lips a little spread at the speaker's average second-formant centroid
WIDE_PER_HZ = 1 / 1000  # centroid above the speaker's average -> spread lips
WIDE_ON_HISS = 0.6  # S, Z, SH: teeth together, lips spread
ROUND_PER_HZ = 1 / 600  # centroid below the speaker's average -> rounded lips


class Hop(NamedTuple):
    """The measures of one hop (levels in dB re full scale: a full-scale sine is about -3 dB)."""

    hop_db: float  # mean power of the hop's own samples
    f1_db: float  # power in F1_BAND_HZ of the windowed spectrum
    high_db: float  # power in HIGH_BAND_HZ
    total_db: float  # power in TOTAL_BAND_HZ
    f2_centroid_hz: float  # power-weighted mean frequency within F2_CENTROID_BAND_HZ
    all_centroid_hz: float  # power-weighted mean frequency within ALL_CENTROID_BAND_HZ


@dataclass(frozen=True)
class HopMeasures:
    """The measures of consecutive hops: one (n_hops,) float64 array per field of `Hop`."""

    hop_db: np.ndarray
    f1_db: np.ndarray
    high_db: np.ndarray
    total_db: np.ndarray
    f2_centroid_hz: np.ndarray
    all_centroid_hz: np.ndarray

    @classmethod
    def empty(cls) -> HopMeasures:
        return cls(*(np.empty(0) for _ in Hop._fields))

    def __len__(self) -> int:
        return len(self.hop_db)

    def __iter__(self) -> Iterator[Hop]:
        """The hops in order, as Python floats (the stages after this work hop by hop)."""
        columns = (self.hop_db, self.f1_db, self.high_db, self.total_db, self.f2_centroid_hz, self.all_centroid_hz)
        return map(Hop._make, zip(*(column.tolist() for column in columns)))


def _db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(power + TINY_POWER)


class HopAnalyser:
    """Turns a growing mono signal into per-hop measures; hop k covers samples [k * hop, (k + 1) * hop)."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.hop = sample_rate_hz * HOP_MS // 1000
        self.window = sample_rate_hz * WINDOW_MS // 1000
        n_fft = 1 << (self.window - 1).bit_length()
        self.taper = np.hanning(self.window)
        self.n_fft = n_fft
        freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate_hz)

        def band(lo_hz: float, hi_hz: float) -> slice:
            idx = np.flatnonzero((freqs >= lo_hz) & (freqs < hi_hz))
            return slice(int(idx[0]), int(idx[-1]) + 1)

        self.f1, self.high, self.total = band(*F1_BAND_HZ), band(*HIGH_BAND_HZ), band(*TOTAL_BAND_HZ)
        self.f2c, self.allc = band(*F2_CENTROID_BAND_HZ), band(*ALL_CENTROID_BAND_HZ)
        self.f2c_hz, self.allc_hz = freqs[self.f2c], freqs[self.allc]
        # window of hop k starts here relative to the hop start, so it is centred on the hop
        self.window_offset = self.hop // 2 - self.window // 2
        # the first windows reach before sample 0: the signal is taken as silent there
        self.pad = -min(self.window_offset, 0)
        self.signal = np.zeros(self.pad, dtype=np.float64)
        self.signal_start = -self.pad  # absolute index of signal[0]
        # samples past a hop's start needed to analyse it: the hop itself and its whole window
        self.reach = max(self.hop, self.window_offset + self.window)
        self.hops_done = 0

    def samples_needed(self, hop_index: int) -> int:
        """Total samples that must have arrived before hop `hop_index` can be analysed."""
        return hop_index * self.hop + self.reach

    def feed(self, samples: np.ndarray) -> HopMeasures:
        """Append (n,) mono samples; return the measures of every hop that became complete, in order."""
        self.signal = np.concatenate([self.signal, samples.astype(np.float64)])
        end = self.signal_start + len(self.signal)
        n = max(0, (end - self.reach) // self.hop + 1 - self.hops_done)
        if n == 0:
            return HopMeasures.empty()
        first = self.hops_done * self.hop - self.signal_start
        hops = self.signal[first:first + n * self.hop].reshape(n, self.hop)
        w = first + self.window_offset
        frames = sliding_window_view(self.signal[w:w + (n - 1) * self.hop + self.window], self.window)[:: self.hop]
        power = np.abs(np.fft.rfft(frames * self.taper, n=self.n_fft, axis=1)) ** 2
        f2c_power, allc_power = power[:, self.f2c], power[:, self.allc]
        out = HopMeasures(
            hop_db=_db(np.square(hops).mean(axis=1)),
            f1_db=_db(power[:, self.f1].sum(axis=1)),
            high_db=_db(power[:, self.high].sum(axis=1)),
            total_db=_db(power[:, self.total].sum(axis=1)),
            f2_centroid_hz=(f2c_power * self.f2c_hz).sum(axis=1) / (f2c_power.sum(axis=1) + TINY_POWER),
            all_centroid_hz=(allc_power * self.allc_hz).sum(axis=1) / (allc_power.sum(axis=1) + TINY_POWER),
        )
        self.hops_done += n
        # keep only what the next hop's window still needs
        keep_from = self.hops_done * self.hop + min(self.window_offset, 0)
        drop = keep_from - self.signal_start
        if drop > 0:
            self.signal = self.signal[drop:]
            self.signal_start = keep_from
        return out


T = TypeVar("T")


class HopSeries(Generic[T]):
    """One value per hop, addressed by absolute hop index; old hops are forgotten from the front.

    Holds hops [first, end). Reading a hop outside that range raises IndexError: a stage asking
    for a hop it has forgotten, or one not yet heard, is a bug, not a value to guess.
    """

    def __init__(self, *, first: int = 0, values: Iterable[T] = ()) -> None:
        self.first = first
        self._values: deque[T] = deque(values)

    @property
    def end(self) -> int:
        """One past the latest hop held."""
        return self.first + len(self._values)

    def append(self, value: T) -> None:
        self._values.append(value)

    def __getitem__(self, hop: int) -> T:
        if not self.first <= hop < self.end:
            raise IndexError(f"hop {hop} is not held (hops {self.first}..{self.end - 1} are)")
        return self._values[hop - self.first]

    def forget_before(self, hop: int) -> None:
        while self.first < hop and self._values:
            self._values.popleft()
            self.first += 1


class SpeechGate:
    """Stage 1: which hops are speech, whatever the recording's gain and background noise.

    A hop is loud when its level stands GATE_MARGIN_DB above the noise floor (the quietest hop of
    the last NOISE_WINDOW_MS) and above SILENCE_FLOOR_DBFS. A loud hop is a speech hop when its run
    of loud hops lasts at least MIN_SPEECH_RUN_MS (shorter runs are clicks), which the hops after it
    tell: a hop is settled once MIN_SPEECH_RUN_MS - 1 more hops have been pushed. Speech is on at a
    hop when a speech hop lies at most HANGOVER_MS before it, which bridges stop closures.
    """

    def __init__(self) -> None:
        self.min_run_hops = MIN_SPEECH_RUN_MS // HOP_MS
        self.hangover_hops = HANGOVER_MS // HOP_MS
        self.block_hops = NOISE_BLOCK_MS // HOP_MS
        self.block_minima: deque[float] = deque(maxlen=NOISE_WINDOW_MS // NOISE_BLOCK_MS)  # of full blocks, dB
        self.block_min = math.inf  # of the block being filled, dB
        self.hops_in_block = 0
        self.hops_in = 0  # pushed
        self.run_hops = 0  # loud hops in a row up to the latest pushed
        # the loud-run length ending at each of the latest min_run_hops hops
        self.recent_runs: deque[int] = deque(maxlen=self.min_run_hops)
        self.latest_speech_hop = -math.inf  # among the settled hops
        # per settled hop: the latest speech hop at or before it (-inf: none yet)
        self.last_speech: HopSeries[float] = HopSeries(first=0)

    def push(self, hop_db: float, *, voice: bool = True) -> bool:
        """Take the next hop's level (dB); return whether it is loud (the hop targets need it at once).

        voice: False when something else already knows the hop is no speech (the phone labeller
        heard silence or noise there): it is then not loud, whatever its level, which still
        counts for the noise floor.
        """
        floor_db = self._noise_floor_db(hop_db)
        loud = voice and hop_db > max(floor_db + GATE_MARGIN_DB, SILENCE_FLOOR_DBFS)
        self.run_hops = self.run_hops + 1 if loud else 0
        self.recent_runs.append(self.run_hops)
        self.hops_in += 1
        if len(self.recent_runs) == self.min_run_hops:
            self._settle(self.hops_in - self.min_run_hops)
        return loud

    def _noise_floor_db(self, hop_db: float) -> float:
        self.block_min = min(self.block_min, hop_db)
        floor = min(min(self.block_minima, default=math.inf), self.block_min)
        self.hops_in_block += 1
        if self.hops_in_block == self.block_hops:
            self.block_minima.append(self.block_min)
            self.block_min = math.inf
            self.hops_in_block = 0
        return floor

    def _settle(self, hop: int) -> None:
        # recent_runs[i] is the loud run ending at hop + i: `hop` is a speech hop when one of them
        # is long enough and reaches back to it
        if any(run >= self.min_run_hops and run > i for i, run in enumerate(self.recent_runs)):
            self.latest_speech_hop = hop
        self.last_speech.append(self.latest_speech_hop)

    def settled_through(self, heard_through: int) -> int:
        """The latest hop whose speech flag the hops up to `heard_through` decide."""
        return heard_through - self.min_run_hops + 1

    def speech_on(self, hop: int, *, seen_through: int | None = None) -> bool:
        """Speech is on at `hop`: a speech hop lies within HANGOVER_MS at or before it.

        seen_through: the latest hop whose flag may count (default `hop`); the caller passes a
        settled hop so that the answer does not depend on how far the audio has been pushed. Past
        `hop`, a speech hop after it counts too (a frame that close to speech is about to speak).
        """
        latest = self.last_speech[hop if seen_through is None else seen_through]
        return latest >= hop - self.hangover_hops

    def forget_before(self, hop: int) -> None:
        """No hop before this one will be asked about again."""
        self.last_speech.forget_before(hop)


class HopTarget(NamedTuple):
    """Stage 2's output: what one hop says about the mouth, before the per-frame smoothing."""

    open: float  # 0..1, as MouthParams.open
    wide: float  # 0..1
    round: float  # 0..1
    closure: bool  # voiced, yet almost nothing in the first-formant band: lips shut


SILENT_TARGET = HopTarget(0.0, 0.0, 0.0, False)


class TargetTracker:
    """Stage 2: one hop's measures (and whether the gate found it loud) -> the mouth it asks for.

    Tracks the speech level (a running high quantile of the first-formant band level over loud
    hops) and this speaker's average centroids, so that openness is relative to how this person
    speaks in this recording: the same speech 20 dB quieter gives the same targets.
    """

    def __init__(self) -> None:
        self.level_db: float | None = None  # running quantile of the first-formant band in speech
        self.loud_hops = 0
        self.f2_centroid_hz = F2_CENTROID_PRIOR_HZ
        self.all_centroid_hz = ALL_CENTROID_PRIOR_HZ
        self.level_step_down_db = LEVEL_STEP_UP_DB * (1 - LEVEL_QUANTILE) / LEVEL_QUANTILE
        self.warmup_hops = LEVEL_WARMUP_MS // HOP_MS

    def step(self, m: Hop, *, loud: bool) -> HopTarget:
        f1_db = m.f1_db
        # how much of the spectrum the first-formant band holds: most in open vowels, whatever the level
        f1_share_db = f1_db - m.total_db
        if loud:
            # a high quantile of the voiced hops sits on the vowels; stepping up by a fixed dB when
            # above and down by a ninth of it when below settles on the 90th percentile
            self.loud_hops += 1
            if self.level_db is None:
                self.level_db = f1_db
            elif self.loud_hops <= self.warmup_hops:
                self.level_db = max(self.level_db, f1_db)
            elif f1_db > self.level_db:
                self.level_db += LEVEL_STEP_UP_DB
            else:
                self.level_db -= self.level_step_down_db
        if self.level_db is None:
            return SILENT_TARGET
        below_level_db = f1_db - self.level_db
        if loud and below_level_db > -VOWEL_BELOW_LEVEL_DB:
            self.f2_centroid_hz += CENTROID_RATE * (m.f2_centroid_hz - self.f2_centroid_hz)
            self.all_centroid_hz += CENTROID_RATE * (m.all_centroid_hz - self.all_centroid_hz)
        open_unclipped = (OPEN_AT_SPEECH_LEVEL + OPEN_PER_DB * below_level_db
                          + OPEN_PER_SHARE_DB * min(0.0, f1_share_db - OPEN_SHARE_DB))
        hiss = m.high_db - m.total_db > SIBILANT_ABOVE_TOTAL_DB
        wide = round_ = 0.0
        if loud:  # the centroids of a faint hop are noise
            wide = clip01(WIDE_AT_AVERAGE + (m.f2_centroid_hz - self.f2_centroid_hz) * WIDE_PER_HZ)
            round_ = clip01((self.all_centroid_hz - m.all_centroid_hz) * ROUND_PER_HZ)
            if hiss:
                wide, round_ = max(wide, WIDE_ON_HISS), 0.0
        # lips shut on a voiced murmur or voice bar leave no first formant, and a labial pulls the
        # second formant down; a quiet hop is more often the end of speech than a closure
        labial = m.f2_centroid_hz < self.f2_centroid_hz
        closure = loud and open_unclipped < CLOSED_BELOW_OPEN and not hiss and labial
        open_ = clip01(open_unclipped)
        if loud and not closure and m.total_db > self.level_db - LIPS_APART_WITHIN_DB:
            open_ = max(open_, LIPS_APART_OPEN)
        return HopTarget(open_, wide, round_, closure)

    def voiced_share(self, m: Hop) -> float:
        """0..1: how much hop `m` is heard as voice, from its whole level under the speech level
        (0 from FAINT_BELOW_LEVEL_DB under it, 1 from FAINT_RAMP_DB louder than that; 1 before any speech)."""
        if self.level_db is None:
            return 1.0
        return voice_share(m.total_db, self.level_db, below_db=FAINT_BELOW_LEVEL_DB, ramp_db=FAINT_RAMP_DB)


def voice_share(level_db: float, reference_db: float, *, below_db: float, ramp_db: float) -> float:
    """0..1: how much a hop this loud is heard as voice against a reference level: nothing from
    below_db under it, in full from ramp_db louder than that (smoothly between)."""
    return float(smoothstep((level_db - reference_db + below_db) / ramp_db))


def clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
