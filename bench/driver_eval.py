"""Measure the mouth driver against English phone labels, the way the project's judge does.

For each recording: pocketsphinx phone recognition (its bundled English phone model) marks the
frames in open vowels and in P/B/M; the driver's `open` should be higher on the first than on the
second. Printed per recording:

- auc: probability that a random open-vowel frame is more open than a random P/B/M frame (real
  people filmed talking: 0.65-0.82); `auc_mid` counts only frames in the middle half of a phone,
  where the labels are surest
- open_p95_step: 95th percentile of |open[i+1] - open[i]|, and the same over the 99th percentile
  of open (`rel`: people stay under about 1/3)
- silence_closed: share of mid-silence frames with the mouth shut (open < 0.05)
- jumpiness: the judge's (bench/judge.py) on `open`: p95 of |open[i+1] - open[i]| over the clip's
  range of open (p95 - p5); people filmed talking 0.20-0.35, goal <= 0.35
- closed_in_silence: the judge's: among frames whose 300-3400 Hz band RMS is more than 35 dB below
  the loudest frame's, the share with open under the clip's 40th percentile of open, frames of
  equal openness ordered at random as a rendered gap's noise orders them (when more than 40% of
  the frames sit at rest, speech and silence alike, silence cannot all rank under it); goal >= 0.9
- auc_judge / auc_best_lag: the judge's viseme AUC (its open vowels add EY) at lag 0, and the lag
  in -5..5 frames (positive: the mouth moved later) where it peaks; goal >= 0.85 and |lag| <= 1
- best_offset_frames: lag of the best correlation between open and the audio level (0 = in sync,
  negative = the mouth leads)
- closed_near_pbm: share of closed frames within a frame of a P/B/M label
- gain_-20dB: mean and max |open difference| when the same audio is 20 dB quieter
- us_per_frame: CPU time of `push` per frame produced, audio pushed in 20 ms chunks

    python bench/driver_eval.py [--fps 25] [WAV ...]   (default: the recordings in ../shared/data)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import SHARED_DATA  # noqa: E402
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, float_to_pcm16, load_audio  # noqa: E402
from lipsync_cli.core.driver import MouthDriver, drive  # noqa: E402
from lipsync_cli.core.timing import first_sample_of_frame  # noqa: E402

RECORDINGS = ("speech_16k_mono_20s.wav", "speech_44k_stereo_7s.wav", "speech_48k_stereo_8s.wav")
# the open vowels of the ARPAbet set pocketsphinx uses (jaw low or mid-low)
OPEN_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH"})
BILABIALS = frozenset({"P", "B", "M"})
SILENCE = "SIL"
PHONE_RATE_HZ = 100  # pocketsphinx segment times are in 10 ms frames
SHUT_OPEN = 0.05  # an `open` below this counts as a shut mouth
# the judge's definitions (bench/judge.py, issue 12), here on `open` instead of a rendered lip gap
JUDGE_OPEN_VOWELS = OPEN_VOWELS | {"EY"}
JUDGE_MAX_LAG_FRAMES = 5
SILENCE_BELOW_PEAK_DB = 35.0  # a frame this far under the clip's loudest is silence
SILENCE_BAND_HZ = (300, 3400)  # ... measured in this band
RMS_FLOOR = 1e-4
CLOSED_PERCENTILE = 40  # in silence the mouth should be at or under this percentile of open
CHUNK_MS = 20  # push size for the cost figure, like a live microphone


@dataclass(frozen=True)
class Phone:
    label: str  # ARPAbet phone, SIL, or a noise marker like +NSN+
    start_s: float
    end_s: float


def recognise_phones(samples: np.ndarray) -> list[Phone]:
    """English phone segments of (n,) float32 mono 16 kHz speech (pocketsphinx allphone decoding)."""
    from pocketsphinx import Decoder, get_model_path

    decoder = Decoder(allphone=get_model_path("en-us/en-us-phone.lm.bin"), lm=None, lw=2.0, pip=0.3,
                      beam=1e-200, pbeam=1e-20, samprate=SAMPLE_RATE_HZ, logfn="/dev/null")
    pcm, _ = float_to_pcm16(samples)
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return [Phone(s.word, s.start_frame / PHONE_RATE_HZ, (s.end_frame + 1) / PHONE_RATE_HZ) for s in decoder.seg()]


def frame_phones(phones: list[Phone], n_frames: int, *, fps: Fraction, middle_only: bool) -> list[str | None]:
    """The phone under each frame's middle; with middle_only, None unless in the middle half of it."""
    out: list[str | None] = []
    j = 0
    for i in range(n_frames):
        start = first_sample_of_frame(i, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)
        end = first_sample_of_frame(i + 1, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)
        t = (start + end) / 2 / SAMPLE_RATE_HZ
        while j < len(phones) and phones[j].end_s <= t:
            j += 1
        label = None
        if j < len(phones) and phones[j].start_s <= t:
            p = phones[j]
            quarter = (p.end_s - p.start_s) / 4
            if not middle_only or p.start_s + quarter <= t <= p.end_s - quarter:
                label = p.label
        out.append(label)
    return out


def auc(higher: np.ndarray, lower: np.ndarray) -> float:
    """P(a random value of `higher` > a random value of `lower`), ties counting half."""
    if len(higher) == 0 or len(lower) == 0:
        return float("nan")
    diff = np.asarray(higher)[:, None] - np.asarray(lower)[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def open_auc(opens: np.ndarray, labels: list[str | None]) -> float:
    """How much more open the mouth is on open vowels than on P/B/M frames (see `auc`)."""
    vowel = np.array([lab in OPEN_VOWELS for lab in labels])
    bilabial = np.array([lab in BILABIALS for lab in labels])
    return auc(opens[vowel], opens[bilabial])


def jumpiness(opens: np.ndarray) -> float:
    """The judge's jumpiness of (n,) per-frame openings: p95 of the frame-to-frame step over p95 - p5."""
    lo, hi = np.percentile(opens, [5, 95])
    return float(np.percentile(np.abs(np.diff(opens)), 95) / max(hi - lo, 1e-9))


def band_level_db(samples: np.ndarray, n_frames: int, *, fps: Fraction) -> np.ndarray:
    """(n_frames,) RMS of the 300-3400 Hz band of (n,) float32 16 kHz mono audio per frame, dB (floor 1e-4)."""
    band = sosfilt(butter(4, SILENCE_BAND_HZ, btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos"),
                   samples.astype(np.float64))
    edges = [first_sample_of_frame(i, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ) for i in range(n_frames + 1)]
    rms = [float(np.sqrt(np.mean(band[a:b] ** 2))) if b > a else 0.0 for a, b in zip(edges, edges[1:])]
    return 20 * np.log10(np.maximum(rms, RMS_FLOOR))


def closed_in_silence(samples: np.ndarray, opens: np.ndarray, *, fps: Fraction) -> float:
    """The judge's closed-in-silence share on (n,) per-frame openings (see the module docstring).

    Frames with equal openings (a driver's rest is exactly 0.0 on every silent frame and often in
    speech) are ordered at random, as a rendered gap's noise orders them: a silent frame counts by
    the chance that its rank falls under the 40th percentile.
    """
    level = band_level_db(samples, len(opens), fps=fps)
    silent = level < level.max() - SILENCE_BELOW_PEAK_DB
    if not silent.any():
        return float("nan")
    ranked = np.sort(opens)
    below = np.searchsorted(ranked, opens[silent], side="left")  # frames strictly lower
    equal = np.searchsorted(ranked, opens[silent], side="right") - below
    quota = CLOSED_PERCENTILE / 100 * len(opens)
    return float(np.mean(np.clip((quota - below) / equal, 0.0, 1.0)))


def judge_auc_by_lag(opens: np.ndarray, labels: list[str | None]) -> dict[int, float]:
    """The judge's viseme AUC with the mouth moved `lag` frames later than the labels, lag -5..5."""
    vowel = np.array([lab in JUDGE_OPEN_VOWELS for lab in labels])
    bilabial = np.array([lab in BILABIALS for lab in labels])
    out = {}
    for lag in range(-JUDGE_MAX_LAG_FRAMES, JUDGE_MAX_LAG_FRAMES + 1):
        # label i is compared with the mouth of frame i + lag
        idx = np.arange(len(labels)) + lag
        ok = (idx >= 0) & (idx < len(opens))
        out[lag] = auc(opens[idx[ok & vowel]], opens[idx[ok & bilabial]])
    return out


def best_offset_frames(samples: np.ndarray, opens: np.ndarray, *, fps: Fraction, max_lag: int = 4) -> int:
    """The lag (frames) at which open best follows the audio level; negative: the mouth leads."""
    edges = [first_sample_of_frame(i, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ) for i in range(len(opens) + 1)]
    level_db = np.array([10 * np.log10(np.mean(np.square(samples[a:b])) + 1e-10) for a, b in zip(edges, edges[1:])])
    level_db = np.maximum(level_db, level_db.max() - 50)

    def corr(lag: int) -> float:
        a = opens[max(0, lag):len(opens) + min(0, lag)]
        b = level_db[max(0, -lag):len(level_db) + min(0, -lag)]
        return float(np.corrcoef(a, b)[0, 1])

    return max(range(-max_lag, max_lag + 1), key=corr)


def push_cost_us_per_frame(samples: np.ndarray, *, fps: Fraction) -> float:
    """CPU microseconds spent in push/flush per frame produced, pushing CHUNK_MS at a time."""
    driver = MouthDriver(fps=fps)
    chunk = SAMPLE_RATE_HZ * CHUNK_MS // 1000
    frames = 0
    start = time.process_time()
    for i in range(0, len(samples), chunk):
        frames += len(driver.push(samples[i:i + chunk]))
    frames += len(driver.flush())
    return (time.process_time() - start) / max(frames, 1) * 1e6


def evaluate(samples: np.ndarray, *, fps: Fraction, phones: list[Phone] | None = None, phonetic: bool = False
             ) -> dict[str, float]:
    """All the figures above for (n,) float32 mono 16 kHz speech."""
    phones = recognise_phones(samples) if phones is None else phones
    params = drive(samples, fps=fps, phonetic=phonetic)
    opens = np.array([p.open for p in params])
    closed = np.array([p.closed for p in params])
    labels_all = frame_phones(phones, len(params), fps=fps, middle_only=False)
    labels_mid = frame_phones(phones, len(params), fps=fps, middle_only=True)
    steps = np.abs(np.diff(opens))
    silent = np.array([lab == SILENCE for lab in labels_mid])
    near_pbm = [any(lab in BILABIALS for lab in labels_all[max(0, i - 1):i + 2]) for i in np.flatnonzero(closed)]
    quiet = np.array([p.open for p in drive(samples * np.float32(0.1), fps=fps, phonetic=phonetic)])
    by_lag = judge_auc_by_lag(opens, labels_all)
    return {
        "auc": open_auc(opens, labels_all),
        "auc_mid": open_auc(opens, labels_mid),
        "open_p95_step": float(np.percentile(steps, 95)),
        "open_p95_step_rel": float(np.percentile(steps, 95) / max(np.percentile(opens, 99), 1e-6)),
        "silence_closed": float((opens[silent] < SHUT_OPEN).mean()) if silent.any() else float("nan"),
        "jumpiness": jumpiness(opens),
        "closed_in_silence": closed_in_silence(samples, opens, fps=fps),
        "auc_judge": by_lag[0],
        "auc_best_lag": max(by_lag, key=lambda k: (by_lag[k], -abs(k))),
        "best_offset_frames": best_offset_frames(samples, opens, fps=fps),
        "closed_near_pbm": float(np.mean(near_pbm)) if near_pbm else float("nan"),
        "gain_-20dB_mean": float(np.abs(quiet - opens).mean()),
        "gain_-20dB_max": float(np.abs(quiet - opens).max()),
        "us_per_frame": push_cost_us_per_frame(samples, fps=fps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wavs", nargs="*", type=Path, help="speech files (default: ../shared/data recordings)")
    parser.add_argument("--fps", type=Fraction, default=Fraction(25))
    parser.add_argument("--phonetic", action="store_true", help="the render's phonetic driver (default: live's)")
    args = parser.parse_args()
    wavs = args.wavs or [SHARED_DATA / name for name in RECORDINGS]
    print(f"mouth driver at {args.fps} fps, lookahead {MouthDriver(fps=args.fps).lookahead_ms:.1f} ms")
    for path in wavs:
        figures = evaluate(load_audio(path).samples, fps=args.fps, phonetic=args.phonetic)
        print(f"{path.name}: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in figures.items()))


if __name__ == "__main__":
    main()
