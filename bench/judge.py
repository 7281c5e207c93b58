"""The outside judge's mouth measures, with its definitions (issue 12), on any rendered video.

Per output frame, the lip gap = distance between face-mesh points 13 and 14 over the face height
(points 10 to 152), from the 468-point landmark model the project runs (`media/face.py`).

- mouth_range: p95 - p5 of the gap over the clip (people filmed talking: 0.08-0.14)
- jumpiness: p95 of |gap[i+1] - gap[i]| over mouth_range (people: 0.20-0.35)
- closed_in_silence: among frames whose 300-3400 Hz band RMS is more than 35 dB below the clip's
  loudest frame, the share whose gap is below the clip's 40th percentile of gap
- auc: P(gap on an open-vowel frame > gap on a P/B/M frame), ties half; pocketsphinx allphone
  labels per frame (the phone under the frame's middle); at lag 0, and `best_lag` in -5..5 frames
  (positive: the video moved later) where it peaks
- face_found: share of frames in which the tracker found the face

    from judge import judge_video
    scores = judge_video(Path("out.mp4"), speech_samples_16k)
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av)
import numpy as np
from scipy.signal import butter, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driver_eval import frame_phones, recognise_phones  # noqa: E402
from lipsync_cli.core.timing import first_sample_of_frame  # noqa: E402
from lipsync_cli.media.audio import SAMPLE_RATE_HZ  # noqa: E402
from lipsync_cli.media.face import FaceTracker  # noqa: E402
from lipsync_cli.media.video import iter_frames, probe_video  # noqa: E402

INNER_TOP, INNER_BOTTOM, FOREHEAD, CHIN = 13, 14, 10, 152  # the judge's face-mesh points
OPEN_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "EY"})
BILABIALS = frozenset({"P", "B", "M"})
SILENCE_BELOW_PEAK_DB = 35.0
SILENCE_BAND_HZ = (300, 3400)
RMS_FLOOR = 1e-4
CLOSED_PERCENTILE = 40
MAX_LAG_FRAMES = 5

# the goal of issue 12, on every avatar
GOAL_AUC = 0.85
GOAL_JUMPINESS = 0.35
GOAL_CLOSED_IN_SILENCE = 0.9
GOAL_RANGE = (0.06, 0.14)


@dataclass(frozen=True)
class Scores:
    auc: float
    best_lag: int
    mouth_range: float
    jumpiness: float
    closed_in_silence: float
    face_found: float
    frames: int

    def misses(self) -> list[str]:
        """The goals this clip misses (empty: it meets them all)."""
        out = []
        if not self.auc >= GOAL_AUC:
            out.append(f"auc {self.auc:.3f} < {GOAL_AUC}")
        if abs(self.best_lag) > 1:
            out.append(f"best lag {self.best_lag:+d} frames")
        if not self.jumpiness <= GOAL_JUMPINESS:
            out.append(f"jumpiness {self.jumpiness:.2f} > {GOAL_JUMPINESS}")
        if not self.closed_in_silence >= GOAL_CLOSED_IN_SILENCE:
            out.append(f"closed in silence {self.closed_in_silence:.2f} < {GOAL_CLOSED_IN_SILENCE}")
        if not GOAL_RANGE[0] <= self.mouth_range <= GOAL_RANGE[1]:
            out.append(f"range {self.mouth_range:.3f} outside {GOAL_RANGE}")
        if self.face_found < 1.0:
            out.append(f"face found in {100 * self.face_found:.1f}% of frames")
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def lip_gaps(video: Path) -> np.ndarray:
    """(N,) lip gap over face height per frame of `video`; NaN where no face was found."""
    tracker = FaceTracker()
    gaps = []
    for frame in iter_frames(video):
        res = tracker.track(frame)
        if res is None:
            gaps.append(np.nan)
            continue
        p = res.points
        gaps.append(float(np.linalg.norm(p[INNER_TOP] - p[INNER_BOTTOM]) / max(np.linalg.norm(p[FOREHEAD] - p[CHIN]), 1e-6)))
    return np.array(gaps)


def band_level_db(samples: np.ndarray, n_frames: int, *, fps: Fraction) -> np.ndarray:
    """(n_frames,) RMS of the 300-3400 Hz band of (n,) float32 16 kHz mono audio per frame, in dB (floor 1e-4)."""
    sos = butter(4, SILENCE_BAND_HZ, btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")
    band = sosfilt(sos, samples.astype(np.float64))
    out = np.empty(n_frames)
    for i in range(n_frames):
        a = first_sample_of_frame(i, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)
        b = first_sample_of_frame(i + 1, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)
        seg = band[a:b]
        rms = float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0
        out[i] = 20 * np.log10(max(rms, RMS_FLOOR))
    return out


def _auc(higher: np.ndarray, lower: np.ndarray) -> float:
    if len(higher) == 0 or len(lower) == 0:
        return float("nan")
    diff = higher[:, None] - lower[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def viseme_auc(gaps: np.ndarray, labels: list[str | None], lag: int) -> float:
    """AUC of open vowels over P/B/M with the video moved `lag` frames later than the labels."""
    vowel, closed = [], []
    for i, lab in enumerate(labels):
        j = i + lag
        if 0 <= j < len(gaps) and not np.isnan(gaps[j]):
            if lab in OPEN_VOWELS:
                vowel.append(gaps[j])
            elif lab in BILABIALS:
                closed.append(gaps[j])
    return _auc(np.array(vowel), np.array(closed))


def score(gaps: np.ndarray, samples: np.ndarray, *, fps: Fraction) -> Scores:
    """The judge's scores of per-frame gaps against (n,) float32 16 kHz mono speech."""
    n = len(gaps)
    found = ~np.isnan(gaps)
    valid = gaps[found]
    lo, hi = np.percentile(valid, [5, 95])
    mouth_range = float(hi - lo)
    steps = np.abs(np.diff(gaps))
    jumpiness = float(np.nanpercentile(steps, 95) / max(mouth_range, 1e-9))
    level = band_level_db(samples, n, fps=fps)
    silent = (level < level.max() - SILENCE_BELOW_PEAK_DB) & found
    closed_level = np.percentile(valid, CLOSED_PERCENTILE)
    closed = float(np.mean(gaps[silent] < closed_level)) if silent.any() else float("nan")
    labels = frame_phones(recognise_phones(samples), n, fps=fps, middle_only=False)
    by_lag = {lag: viseme_auc(gaps, labels, lag) for lag in range(-MAX_LAG_FRAMES, MAX_LAG_FRAMES + 1)}
    best = max(by_lag, key=lambda k: (by_lag[k], -abs(k)))
    return Scores(auc=by_lag[0], best_lag=best, mouth_range=mouth_range, jumpiness=jumpiness,
                  closed_in_silence=closed, face_found=float(found.mean()), frames=n)


def judge_video(video: Path, samples: np.ndarray) -> Scores:
    """Scores of a rendered `video` against the speech it was rendered from ((n,) float32 16 kHz mono)."""
    return score(lip_gaps(video), samples, fps=probe_video(video).fps)
