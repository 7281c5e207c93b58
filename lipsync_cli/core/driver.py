"""The mouth driver: speech audio -> per video frame mouth parameters, weight-free and streaming.

The audio is cut into 10 ms hops. Each hop gets a few spectral measures (band levels in dB and
spectral centroids); running trackers turn them into speech/silence and mouth targets that do not
depend on the recording's gain:

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

Each video frame then reads the hop targets around its own time plus a small anticipation, is
smoothed and speed-limited the way real lips move (approaching a closure or the end of speech over
two frames, since the next frame's audio is already here), and keeps P/B/M closures sharp. Only a
fixed amount of audio past a frame is needed (`lookahead_ms`), and `push` on any chunking gives
exactly the frames `drive` gives on the whole clip.

Limits: the shapes G (F/V) and H (L) need the phone's identity and are never chosen; audio that
starts mid-vowel with nothing quieter before it is taken as speech only from its first dip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lipsync_cli.media.audio import SAMPLE_RATE_HZ, check_samples
from lipsync_cli.errors import AudioError
from lipsync_cli.core.timing import first_sample_of_frame, frame_count

HOP_MS = 10  # analysis step
WINDOW_MS = 25  # spectral analysis window, centred on each hop
ANTICIPATION_MS = 20  # a frame, from when it appears, shows the mouth of the sound this much later
SMOOTH_HALF_MS = 40  # half width of the triangular smoothing of hop targets around a frame's time
AHEAD_MS = 50  # audio analysed past a frame's sound time before the frame is decided
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
SIBILANT_ABOVE_TOTAL_DB = -6.0  # high band within this much of the total level: a hiss, not closed
WIDE_AT_AVERAGE = 0.3  # lips a little spread at the speaker's average second-formant centroid
WIDE_PER_HZ = 1 / 1000  # centroid above the speaker's average -> spread lips
WIDE_ON_HISS = 0.6  # S, Z, SH: teeth together, lips spread
ROUND_PER_HZ = 1 / 600  # centroid below the speaker's average -> rounded lips

MAX_LIP_SPEED_PER_S = 5.0  # full ranges per second, for open, wide and round: a fifth per 25 fps frame
HOLD_MS = 70  # a shape is held at least this long (closures and silence excepted)
TURN_DEADBAND = 0.1  # a turn of `open` sooner than HOLD_MS after the last must be this large

F1_BAND_HZ = (450, 1200)  # first formant of open vowels
F2_CENTROID_BAND_HZ = (1000, 4000)  # front vowels high, rounded vowels low
ALL_CENTROID_BAND_HZ = (300, 3500)
HIGH_BAND_HZ = (4000, 8000)  # sibilant hiss
TOTAL_BAND_HZ = (60, 8000)
TINY_POWER = 1e-12  # keeps log10 finite on digital silence
HOP_MEASURES = ("hop_db", "f1_db", "high_db", "total_db", "f2_centroid_hz", "all_centroid_hz")


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


def _db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(power + TINY_POWER)


class _HopAnalyser:
    """Turns a growing mono signal into per-hop spectral measures (dB levels, centroids in Hz)."""

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

    def feed(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """Append samples; return the measures of every hop that became complete, in order."""
        self.signal = np.concatenate([self.signal, samples.astype(np.float64)])
        end = self.signal_start + len(self.signal)
        n = max(0, (end - self.reach) // self.hop + 1 - self.hops_done)
        if n == 0:
            return {name: np.empty(0) for name in HOP_MEASURES}
        first = self.hops_done * self.hop - self.signal_start
        hops = self.signal[first:first + n * self.hop].reshape(n, self.hop)
        w = first + self.window_offset
        frames = sliding_window_view(self.signal[w:w + (n - 1) * self.hop + self.window], self.window)[:: self.hop]
        power = np.abs(np.fft.rfft(frames * self.taper, n=self.n_fft, axis=1)) ** 2
        f2c_power, allc_power = power[:, self.f2c], power[:, self.allc]
        out = {
            "hop_db": _db(np.square(hops).mean(axis=1)),
            "f1_db": _db(power[:, self.f1].sum(axis=1)),
            "high_db": _db(power[:, self.high].sum(axis=1)),
            "total_db": _db(power[:, self.total].sum(axis=1)),
            "f2_centroid_hz": (f2c_power * self.f2c_hz).sum(axis=1) / (f2c_power.sum(axis=1) + TINY_POWER),
            "all_centroid_hz": (allc_power * self.allc_hz).sum(axis=1) / (allc_power.sum(axis=1) + TINY_POWER),
        }
        self.hops_done += n
        # keep only what the next hop's window still needs
        keep_from = self.hops_done * self.hop + min(self.window_offset, 0)
        drop = keep_from - self.signal_start
        if drop > 0:
            self.signal = self.signal[drop:]
            self.signal_start = keep_from
        return out


@dataclass
class _HopTargets:
    """What one hop says about the mouth, before the per-frame smoothing."""

    loud: bool  # far enough above the noise floor to be voice (or a click)
    open: float
    wide: float
    round: float
    closure: bool  # voiced, yet almost nothing in the first-formant band: lips shut


class _HopTracker:
    """Running noise floor, speech level and speaker centroids; one hop of measures -> targets."""

    def __init__(self) -> None:
        self.block_hops = NOISE_BLOCK_MS // HOP_MS
        self.blocks_kept = NOISE_WINDOW_MS // NOISE_BLOCK_MS
        self.block_minima: list[float] = []
        self.block_min = math.inf
        self.hops_in_block = 0
        self.level_db: float | None = None  # running quantile of the first-formant band in speech
        self.loud_hops = 0
        self.f2_centroid_hz = F2_CENTROID_PRIOR_HZ
        self.all_centroid_hz = ALL_CENTROID_PRIOR_HZ
        self.level_step_down_db = LEVEL_STEP_UP_DB * (1 - LEVEL_QUANTILE) / LEVEL_QUANTILE
        self.warmup_hops = LEVEL_WARMUP_MS // HOP_MS

    def _noise_floor(self, hop_db: float) -> float:
        self.block_min = min(self.block_min, hop_db)
        floor = min(self.block_minima + [self.block_min])
        self.hops_in_block += 1
        if self.hops_in_block == self.block_hops:
            self.block_minima = (self.block_minima + [self.block_min])[-self.blocks_kept:]
            self.block_min = math.inf
            self.hops_in_block = 0
        return floor

    def step(self, m: dict[str, float]) -> _HopTargets:
        floor = self._noise_floor(m["hop_db"])
        loud = m["hop_db"] > max(floor + GATE_MARGIN_DB, SILENCE_FLOOR_DBFS)
        f1_db = m["f1_db"]
        # how much of the spectrum the first-formant band holds: most in open vowels, whatever the level
        f1_share_db = f1_db - m["total_db"]
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
            return _HopTargets(loud, 0.0, 0.0, 0.0, False)
        below_level_db = f1_db - self.level_db
        if loud and below_level_db > -VOWEL_BELOW_LEVEL_DB:
            self.f2_centroid_hz += CENTROID_RATE * (m["f2_centroid_hz"] - self.f2_centroid_hz)
            self.all_centroid_hz += CENTROID_RATE * (m["all_centroid_hz"] - self.all_centroid_hz)
        open_unclipped = (OPEN_AT_SPEECH_LEVEL + OPEN_PER_DB * below_level_db
                          + OPEN_PER_SHARE_DB * min(0.0, f1_share_db - OPEN_SHARE_DB))
        hiss = m["high_db"] - m["total_db"] > SIBILANT_ABOVE_TOTAL_DB
        wide = round_ = 0.0
        if loud:  # the centroids of a faint hop are noise
            wide = _clip01(WIDE_AT_AVERAGE + (m["f2_centroid_hz"] - self.f2_centroid_hz) * WIDE_PER_HZ)
            round_ = _clip01((self.all_centroid_hz - m["all_centroid_hz"]) * ROUND_PER_HZ)
            if hiss:
                wide, round_ = max(wide, WIDE_ON_HISS), 0.0
        # lips shut on a voiced murmur or voice bar leave no first formant, and a labial pulls the
        # second formant down; a quiet hop is more often the end of speech than a closure
        labial = m["f2_centroid_hz"] < self.f2_centroid_hz
        closure = loud and open_unclipped < CLOSED_BELOW_OPEN and not hiss and labial
        return _HopTargets(loud, _clip01(open_unclipped), wide, round_, closure)


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


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
        self.analyser = _HopAnalyser(sample_rate_hz)
        self.tracker = _HopTracker()
        self.hop = self.analyser.hop
        self.anticipation = sample_rate_hz * ANTICIPATION_MS // 1000
        self.smooth_hops = SMOOTH_HALF_MS // HOP_MS
        self.ahead_hops = AHEAD_MS // HOP_MS
        self.min_run_hops = MIN_SPEECH_RUN_MS // HOP_MS
        self.hangover_hops = HANGOVER_MS // HOP_MS
        self.max_step = MAX_LIP_SPEED_PER_S / float(fps)
        self.hold_frames = max(1, math.ceil(HOLD_MS / 1000 * float(fps)))
        self.samples_in = 0  # pushed
        self.samples_fed = 0  # pushed, plus the silence flush adds
        self.frames_out = 0
        # per-hop history from hop `hops_base` on, trimmed as frames are decided; the hops before
        # the audio starts are silence, so the first frames see a full window
        lead = self.smooth_hops + self.hangover_hops + 1
        self.hops_base = -lead
        self.targets = [_HopTargets(False, 0.0, 0.0, 0.0, False)] * lead
        self.run_before = [0] * lead  # loud hops in a row ending at this hop
        self.last_active = [-math.inf] * lead  # latest hop at or before this one inside a speech run
        # frame smoother state
        self.open = self.wide = self.round = 0.0
        self.direction = 0  # of the last change of `open`: -1, 0, +1
        self.frames_since_turn = 0
        self.shape = "X"
        self.shape_frames = 0

    @property
    def lookahead_ms(self) -> float:
        """How far past a frame's end audio must have arrived before that frame is decided (ms)."""
        # _samples_needed(i) is at most frame i's start + anticipation + ahead hops + one hop's
        # analysis reach, and frame i is at least this many samples long
        shortest_frame = self.sample_rate_hz * self.fps.denominator // self.fps.numerator
        worst = self.anticipation + self.ahead_hops * self.hop + self.analyser.reach - shortest_frame
        return 1000 * worst / self.sample_rate_hz

    def _frame_start(self, frame_index: int) -> int:
        return first_sample_of_frame(frame_index, fps=self.fps, sample_rate_hz=self.sample_rate_hz)

    def _centre_hop(self, frame_index: int) -> int:
        """The hop whose sound frame `frame_index` shows: ANTICIPATION_MS after the frame appears."""
        return (self._frame_start(frame_index) + self.anticipation) // self.hop

    def _samples_needed(self, frame_index: int) -> int:
        return self.analyser.samples_needed(self._centre_hop(frame_index) + self.ahead_hops)

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
        silence = np.zeros(max(0, self._samples_needed(total - 1) - self.samples_fed), dtype=np.float32)
        return self._feed(silence, total)

    def _feed(self, samples: np.ndarray, total_frames: int) -> list[MouthParams]:
        self.samples_fed += len(samples)
        self._add_hops(samples)
        return self._decide(total_frames)

    def _add_hops(self, samples: np.ndarray) -> None:
        measures = self.analyser.feed(samples)
        for row in zip(*(measures[name].tolist() for name in HOP_MEASURES)):
            t = self.tracker.step(dict(zip(HOP_MEASURES, row)))
            self.targets.append(t)
            self.run_before.append(self.run_before[-1] + 1 if t.loud else 0)
        # a loud hop is speech when its run of loud hops is long enough (clicks are short), which
        # the next min_run_hops - 1 hops tell
        end = self.hops_base + len(self.targets)
        while self.hops_base + len(self.last_active) + self.min_run_hops - 1 < end:
            k = self.hops_base + len(self.last_active)
            active = False
            for j in range(k, k + self.min_run_hops):
                if not self.targets[j - self.hops_base].loud:
                    break
                if self.run_before[j - self.hops_base] >= self.min_run_hops:
                    active = True
                    break
            self.last_active.append(k if active else self.last_active[-1])

    def _decide(self, total_frames: int) -> list[MouthParams]:
        out = []
        while self.frames_out < total_frames and self._samples_needed(self.frames_out) <= self.samples_fed:
            out.append(self._frame(self.frames_out))
            self.frames_out += 1
        return out

    def _mean(self, field: str, first_hop: int, last_hop: int, centre_hop: int) -> float:
        """Triangular-weighted mean of a hop target over [first_hop, last_hop] around centre_hop."""
        total = weight_sum = 0.0
        for k in range(first_hop, last_hop + 1):
            w = self.smooth_hops + 1 - abs(k - centre_hop)
            total += w * getattr(self.targets[k - self.hops_base], field)
            weight_sum += w
        return total / weight_sum

    def _closure_at(self, hop: int) -> bool:
        """Lips shut around this hop: most of the three hops centred on it say so."""
        base = self.hops_base
        return sum(self.targets[k - base].closure for k in range(hop - 1, hop + 2)) >= 2

    def _frame(self, frame_index: int) -> MouthParams:
        k = self._centre_hop(frame_index)
        k_next = self._centre_hop(frame_index + 1)
        last_hop = k + self.ahead_hops
        decided = last_hop - self.min_run_hops + 1  # the latest hop whose speech flag is known
        speech = self.last_active[k - self.hops_base] >= k - self.hangover_hops
        self._trim(k - self.smooth_hops - self.hangover_hops)
        if not speech:
            self.open, self.wide, self.round, self.direction = 0.0, 0.0, 0.0, 0
            self._hold_shape("X")
            return REST
        lo, hi = k - self.smooth_hops, k + self.smooth_hops
        target, wide, round_ = self._mean("open", lo, hi, k), self._mean("wide", lo, hi, k), self._mean("round", lo, hi, k)
        closed = self._closure_at(k)
        # where the next frame is heading, from the audio already here, so that a closure or the
        # end of speech is approached over two frames instead of snapped to in one
        next_speech = self.last_active[decided - self.hops_base] >= k_next - self.hangover_hops
        if k_next + 1 > last_hop:
            next_target = target  # frames this far apart (a low fps): nothing known of the next one
        elif not next_speech or self._closure_at(k_next):
            next_target = 0.0
        else:
            next_target = self._mean("open", k_next - self.smooth_hops, min(k_next + self.smooth_hops, last_hop), k_next)
        self.wide, self.round = self._toward(self.wide, wide), self._toward(self.round, round_)
        self._move_open(0.0 if closed else target, next_target, jump=closed)
        shape = self._hold_shape(_shape(self.open, self.round, closed))
        return MouthParams(self.open, self.wide, self.round, closed, True, shape)

    def _toward(self, value: float, target: float) -> float:
        """One frame's move from value toward target at the lips' top speed."""
        return value + max(-self.max_step, min(self.max_step, target - value))

    def _move_open(self, target: float, next_target: float, *, jump: bool) -> None:
        """Move `open` toward target at a lip's speed, ready for next_target, without fluttering."""
        if jump:
            self.open, self.direction, self.frames_since_turn = target, 0, 0
            return
        step = self.max_step
        lo, hi = self.open - step, self.open + step
        value = min(max(target, lo), hi)
        # stay within one step of where the next frame must be
        value = min(value, max(lo, next_target + step))
        value = max(value, min(hi, next_target - step))
        direction = (value > self.open) - (value < self.open)
        self.frames_since_turn += 1
        if direction and self.direction and direction != self.direction:
            if self.frames_since_turn < self.hold_frames and abs(value - self.open) < TURN_DEADBAND:
                return  # a turn this soon after the last one is flutter: hold
            self.frames_since_turn = 0
        if direction:
            self.direction = direction
        self.open = value

    def _hold_shape(self, shape: str) -> str:
        """Keep each shape on screen at least HOLD_MS; closures and silence change at once."""
        urgent = shape in "AX" or self.shape in "AX"
        if shape != self.shape and (urgent or self.shape_frames >= self.hold_frames):
            self.shape, self.shape_frames = shape, 0
        self.shape_frames += 1
        return self.shape

    def _trim(self, first_needed_hop: int) -> None:
        drop = first_needed_hop - self.hops_base
        if drop > 256:
            del self.targets[:drop], self.run_before[:drop], self.last_active[:drop]
            self.hops_base += drop


def drive(samples: np.ndarray, *, fps: Fraction, sample_rate_hz: int = SAMPLE_RATE_HZ) -> list[MouthParams]:
    """Mouth parameters for a whole clip: (n,) float32 mono at sample_rate_hz -> frame_count(n) frames."""
    driver = MouthDriver(fps=fps, sample_rate_hz=sample_rate_hz)
    return driver.push(samples) + driver.flush()
