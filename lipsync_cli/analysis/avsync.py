"""How far a video's mouth is from its sound: `measure_sync(video, audio=None) -> SyncReport`.

Works on any talking-head video, not only ours, with the face tracker `prepare` uses:

1. Mouth, per video frame: the jaw opening, nose tip to chin over the eye distance. The jaw is
   what opens with loud (open) sounds, and its landmarks stay steady where the inner-lip points
   jump between lips and teeth; the eye distance does not move with the jaw.
2. Sound, per video frame: the speech-band (300-3400 Hz) RMS in dB over the frame's own samples
   (`core.timing` maps samples to frames), the sound played while the frame is shown, as the
   renderer draws it. The band filter is zero-phase, so it adds no delay. (A camera takes its
   picture at the start of that interval, so filmed footage may read up to half a frame late.)
3. Both high-passed (minus their Gaussian-smoothed selves), which keeps the syllable-rate motion
   and drops slow drifts (the head moving closer, the voice getting louder).
4. Pearson correlation of the two at each lag in -max..+max frames, over the frames with speech
   only: a mouth opening in silence (a breath before speaking) has no sound to be matched to.
5. The offset is the lag of the highest correlation; positive means the mouth comes AFTER its sound.
   A parabola through the peak and its two neighbours gives it to a fraction of a frame (`offset_ms`).

The peak correlation and its margin over the best lag more than one frame away say how much the
measurement can be trusted. Only the first `max_seconds` are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync_cli.core.timing import first_sample_of_frame
from lipsync_cli.errors import AudioError, VideoError
from lipsync_cli.media import face as F
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.media.video import iter_frames, probe_video
from lipsync_cli.progress import ProgressFn, report

DEFAULT_MAX_SECONDS = 60.0  # longer videos: their start is enough and keeps the check quick
DEFAULT_MAX_LAG_FRAMES = 10  # +-400 ms at 25 fps: beyond that nobody needs a tool to see it
SPEECH_BAND_HZ = (300.0, 3400.0)  # the telephone band: where speech energy follows the mouth
BAND_FILTER_ORDER = 4
HIGH_PASS_SIGMA_FRAMES = 6.0  # slower changes than ~0.25 s at 25 fps are drift, not articulation
NOISE_FLOOR_PERCENTILE = 10  # the quietest tenth of the frames is taken as the room's noise
SPEECH_OVER_FLOOR_DB = 15.0  # a frame is speech when this much louder than the noise floor
SILENT_PEAK_DBFS = -60.0  # a sound whose loudest sample is below this is silence, not quiet speech
MIN_SPEECH_FRAMES = 25  # fewer speech frames (1 s at 25 fps) cannot give a reliable peak
MIN_FACE_FRAMES = 25  # likewise for frames with the face found
LEVEL_EPS = 1e-10  # keeps log10 finite on digital silence (-100 dB)
WEAK_CORRELATION = 0.1  # a peak below this is barely above chance for a few hundred frames
SIDE_LOBE_FRAMES = 1  # lags this close to the peak belong to it when judging the margin


@dataclass(frozen=True)
class SyncOptions:
    """What `measure_sync` reads and searches."""

    max_seconds: float = DEFAULT_MAX_SECONDS  # only the first this many seconds are measured
    max_lag_frames: int = DEFAULT_MAX_LAG_FRAMES  # lags searched on each side of 0

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError("max_seconds must be positive")
        if self.max_lag_frames < 1:
            raise ValueError("max_lag_frames must be at least 1")


@dataclass(frozen=True)
class SyncReport:
    """The measured offset of a video's mouth from its sound."""

    offset_frames: int  # positive: the mouth comes after its sound (the picture is late)
    offset_ms: float  # the same to a fraction of a frame (parabola through the peak), in milliseconds
    fps: float
    frames: int  # video frames measured
    speech_frames: int  # of those, frames with speech (the ones correlated)
    face_found: float  # share of the measured frames in which the face was found, 0..1
    peak_correlation: float  # Pearson correlation at the offset, -1..1 (people filmed talking: ~0.2-0.5)
    margin: float  # peak minus the best correlation more than one frame from it (0: ambiguous)
    correlations: tuple[float, ...]  # by lag, from -max_lag_frames to +max_lag_frames

    @property
    def in_sync(self) -> bool:
        """Within one frame: what viewers cannot see."""
        return abs(self.offset_frames) <= 1

    @property
    def reliable(self) -> bool:
        """The mouth clearly follows the sound at the offset (else the sound may not be this face's)."""
        return self.peak_correlation >= WEAK_CORRELATION

    @property
    def ambiguous(self) -> bool:
        """Another offset more than a frame away matches within one standard error of a correlation
        over this many speech frames (1 / sqrt(n)): speech's syllable rhythm repeats, and on a short
        clip its echo can win by chance (the talking speaker's first 10 s measure -8 frames, margin 0.06,
        over 130 speech frames; his first 12 s and more measure +1)."""
        return bool(self.margin < 1 / np.sqrt(max(self.speech_frames, 1)))


@dataclass(frozen=True)
class MouthTrack:
    """Per video frame: the jaw opening (float64, NaN where no face) of the first frames of a video."""

    opening: np.ndarray  # (n,) nose-tip-to-chin distance over the eye distance
    fps: Fraction

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.opening)


def jaw_opening(points: np.ndarray) -> np.ndarray:
    """Nose tip to chin over the eye distance; (..., 468, 2) -> (...)."""
    jaw = np.linalg.norm(points[..., F.CHIN, :] - points[..., F.NOSE_TIP, :], axis=-1)
    return jaw / np.maximum(F.interocular_px(points), 1e-6)


def track_mouth(video: Path, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                progress: ProgressFn | None = None) -> MouthTrack:
    """Track the face through the first `max_seconds` of `video` and measure the jaw in every frame."""
    progress = report(progress)
    info = probe_video(video)
    max_frames = max(1, int(max_seconds * info.fps))
    total = min(info.n_frames, max_frames) if info.n_frames else max_frames
    tracker = F.FaceTracker()
    opening = []
    for i, frame in enumerate(iter_frames(video, info)):
        if i >= max_frames:
            break
        found = tracker.track(frame)
        opening.append(float(jaw_opening(found.points)) if found is not None else np.nan)
        progress("tracking", i + 1, max(total, i + 1))
    if not opening:
        raise VideoError(f"{video}: the video stream holds no frames")
    return MouthTrack(opening=np.array(opening, np.float64), fps=info.fps)


def speech_levels_db(samples: np.ndarray, *, fps: Fraction, n_frames: int,
                     sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """(n,) float32 mono at sample_rate_hz -> (n_frames,) float64 speech-band RMS in dBFS per video
    frame; NaN for frames the audio does not fully cover."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(BAND_FILTER_ORDER, SPEECH_BAND_HZ, btype="bandpass", fs=sample_rate_hz, output="sos")
    pad = min(len(samples) - 1, 3 * 2 * len(sos))  # scipy's default edge padding, shortened for tiny inputs
    band = sosfiltfilt(sos, samples.astype(np.float64), padlen=max(pad, 0))
    bounds = np.array([first_sample_of_frame(i, fps=fps, sample_rate_hz=sample_rate_hz)
                       for i in range(n_frames + 1)])
    levels = np.full(n_frames, np.nan)
    covered = int(np.searchsorted(bounds, len(band), side="right")) - 1  # frames whose last sample exists
    if covered > 0:
        energy = np.add.reduceat(band**2, bounds[:covered])[:covered] / np.diff(bounds[:covered + 1])
        levels[:covered] = 10 * np.log10(energy + LEVEL_EPS)
    return levels


def _high_pass(x: np.ndarray) -> np.ndarray:
    """x minus its Gaussian-smoothed self (x without NaN)."""
    from scipy.ndimage import gaussian_filter1d

    return x - gaussian_filter1d(x, HIGH_PASS_SIGMA_FRAMES, mode="nearest")


def _fill(x: np.ndarray) -> np.ndarray:
    """Interpolate over NaN (frames without a face or without audio) so filters can run."""
    ok = np.isfinite(x)
    idx = np.arange(len(x))
    return np.interp(idx, idx[ok], x[ok])


def lag_correlations(mouth: np.ndarray, levels_db: np.ndarray, speech: np.ndarray, *,
                     max_lag_frames: int) -> np.ndarray:
    """Pearson correlation of mouth[i] with levels_db[i - lag] for lag in -max..+max frames.

    mouth, levels_db: (n,) float64, NaN where unknown; speech: (n,) bool, the audio frames that
    count. Returns (2 * max_lag_frames + 1,) float64, NaN where a lag has too few frames to judge.
    """
    n = len(mouth)
    m, a = _high_pass(_fill(mouth)), _high_pass(_fill(levels_db))
    usable_mouth, usable_audio = np.isfinite(mouth), np.isfinite(levels_db) & speech
    out = np.full(2 * max_lag_frames + 1, np.nan)
    for k, lag in enumerate(range(-max_lag_frames, max_lag_frames + 1)):
        i = np.arange(max(0, lag), min(n, n + lag))  # mouth frames with an audio frame i - lag
        j = i - lag
        keep = usable_mouth[i] & usable_audio[j]
        if keep.sum() < MIN_SPEECH_FRAMES:
            continue
        x, y = m[i[keep]], a[j[keep]]
        x, y = x - x.mean(), y - y.mean()
        denom = np.sqrt((x * x).sum() * (y * y).sum())
        if denom > 0:
            out[k] = float((x * y).sum() / denom)
    return out


def _refine(corr: np.ndarray, best: int, lag: int) -> float:
    """The peak's lag to a fraction of a frame: the vertex of the parabola through it and its neighbours."""
    if best == 0 or best == len(corr) - 1 or not np.isfinite(corr[best - 1:best + 2]).all():
        return float(lag)
    before, peak, after = corr[best - 1:best + 2]
    curvature = before - 2 * peak + after
    if curvature >= 0:  # not a maximum (flat): keep the whole frame
        return float(lag)
    return lag + float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))


def _audio_delay_s(video: Path) -> float:
    """How much later the video's own sound track starts than its picture (the container's start times)."""
    import av

    try:
        with av.open(str(video)) as container:
            v, a = container.streams.video[0], container.streams.audio[0]
            start = [float(s.start_time * s.time_base) if s.start_time is not None else 0.0 for s in (v, a)]
    except (av.FFmpegError, OSError, IndexError):
        return 0.0  # load_audio has read the sound already; a missing start time means "together"
    return start[1] - start[0]


def _load_sound(video: Path, audio: Path | None) -> np.ndarray:
    """The sound to check against as (n,) float32 at SAMPLE_RATE_HZ, sample 0 at the first video frame."""
    if audio is not None:
        return load_audio(audio).samples
    try:
        samples = load_audio(video).samples
    except AudioError as exc:
        raise AudioError(f"{video}: no sound track could be read; give the sound as a second argument: "
                         "lipsync check VIDEO AUDIO") from exc
    delay = int(round(_audio_delay_s(video) * SAMPLE_RATE_HZ))
    if delay > 0:  # the sound starts later than the picture: silence until it does
        return np.concatenate([np.zeros(delay, np.float32), samples])
    return samples[-delay:]


def measure_sync(video: Path, audio: Path | None = None, *, options: SyncOptions = SyncOptions(),
                 progress: ProgressFn | None = None) -> SyncReport:
    """Measure how far the mouth in `video` is from its sound (its own track, or the file `audio`).

    Raises VideoError (unreadable, no video stream, no face) or AudioError (no sound, silent) when
    there is nothing to measure; any offset it can measure is a report, never an error.
    """
    video = Path(video)
    info = probe_video(video)  # unreadable or no video stream: say so before decoding any sound
    where = str(audio if audio is not None else video)
    samples = _load_sound(video, Path(audio) if audio is not None else None)
    samples = samples[:int(options.max_seconds * SAMPLE_RATE_HZ)]
    if not len(samples) or 20 * np.log10(float(np.abs(samples).max()) + LEVEL_EPS) < SILENT_PEAK_DBFS:
        raise AudioError(f"{where}: the sound is silent; there is no speech to check the mouth against")
    track = track_mouth(video, max_seconds=options.max_seconds, progress=progress)
    n = len(track.opening)
    n_found = int(track.found.sum())
    if n < MIN_FACE_FRAMES:
        raise VideoError(f"{video}: {n} frame{'s are' if n != 1 else ' is'} too few to measure; the check needs "
                         f"at least {MIN_FACE_FRAMES} ({MIN_FACE_FRAMES / float(info.fps):.1f} s) of a talking face")
    if n_found < MIN_FACE_FRAMES:
        seen = f"the face was found in only {n_found} of {n} frames" if n_found else f"no face in any of {n} frames"
        raise VideoError(f"{video}: {seen}; the check needs a visible, frontal talking face")
    levels = speech_levels_db(samples, fps=info.fps, n_frames=n)
    heard = np.isfinite(levels)  # frames the sound covers
    if not heard.any():
        raise AudioError(f"{where}: the sound is shorter than one video frame; there is no speech to check "
                         "the mouth against")
    floor = np.percentile(levels[heard], NOISE_FLOOR_PERCENTILE)
    speech = heard & (levels > floor + SPEECH_OVER_FLOOR_DB)
    if speech.sum() < MIN_SPEECH_FRAMES:
        raise AudioError(f"{where}: only {int(speech.sum())} frames hold speech; the check needs at least "
                         f"{MIN_SPEECH_FRAMES} ({MIN_SPEECH_FRAMES / float(info.fps):.1f} s)")
    corr = lag_correlations(track.opening, levels, speech, max_lag_frames=options.max_lag_frames)
    if not np.isfinite(corr).any():
        raise VideoError(f"{video}: the mouth and the sound overlap too little to be compared")
    best = int(np.nanargmax(corr))
    lags = np.arange(-options.max_lag_frames, options.max_lag_frames + 1)
    far = np.abs(lags - lags[best]) > SIDE_LOBE_FRAMES
    runner_up = np.nanmax(corr[far]) if np.isfinite(corr[far]).any() else -1.0
    offset = int(lags[best])
    return SyncReport(offset_frames=offset, offset_ms=1000.0 * _refine(corr, best, offset) / float(info.fps),
                      fps=float(info.fps), frames=n, speech_frames=int(speech.sum()), face_found=n_found / n,
                      peak_correlation=float(corr[best]), margin=float(corr[best] - runner_up),
                      correlations=tuple(round(float(c), 4) if np.isfinite(c) else float("nan") for c in corr))
