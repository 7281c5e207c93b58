"""Held-out avatars and long speech for the benchmarks and the quality tests.

- `neutral_avatar(still, out)`: a model video made from a still portrait (mouth closed in every
  frame), animated the way `samples/make_samples.py` animates its photo: a slow breath and sway
  that are periodic over the clip and at rest at both ends, so it loops back and forth cleanly.
- `long_speech(out)`: the real recordings of ../shared/data joined with pauses, 16 kHz mono.

Both write into a folder the caller gives (a temporary or cache folder), never into the repo.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from common import SHARED_DATA
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.media.video import Mp4Writer

STILLS = ("man_portrait_1024x1536.png", "painted_girl_1432x1432.jpg")
# recordings the mouth was tuned on, and the ones held out for reporting
TUNE_SPEECH = ("speech_16k_mono_20s.wav", "speech_48k_stereo_8s.wav")
HELD_OUT_SPEECH = ("speech_44k_stereo_15s_b.wav", "speech_48k_stereo_12s.wav", "speech_44k_stereo_7s.wav")
AVATAR_WIDTH_PX = 576
AVATAR_HEIGHT_PX = 768
AVATAR_FPS = 25
AVATAR_SECONDS = 8
BREATH_CYCLES = 2
BREATH_SCALE = 0.003  # vertical stretch at the top of a breath
SWAY_DEG = 0.35
PAUSE_S = 0.8  # silence between joined recordings


def _crop_portrait(img: np.ndarray) -> np.ndarray:
    """The largest 3:4 window of `img`, centred horizontally, from the top (faces sit high in portraits)."""
    h, w = img.shape[:2]
    cw = min(w, int(h * 3 / 4))
    ch = int(cw * 4 / 3)
    x0 = (w - cw) // 2
    return img[:ch, x0:x0 + cw]


def neutral_avatar(still: Path, out: Path, *, seconds: int = AVATAR_SECONDS, fps: int = AVATAR_FPS,
                   width_px: int = AVATAR_WIDTH_PX, height_px: int = AVATAR_HEIGHT_PX) -> Path:
    """Write an H.264 model video of the still portrait `still` (made once; reused when `out` exists)."""
    if out.exists():
        return out
    img = cv2.imread(str(still), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(still)
    # a margin around the output so the motion never pulls in pixels from outside the photo
    base = cv2.resize(_crop_portrait(img), (int(width_px * 1.04), int(height_px * 1.04)), interpolation=cv2.INTER_AREA)
    mx, my = (base.shape[1] - width_px) / 2, (base.shape[0] - height_px) / 2
    n = seconds * fps
    pivot = (base.shape[1] / 2, base.shape[0] * 1.2)  # below the frame: the hips
    tmp = out.with_suffix(".part.mp4")
    with Mp4Writer(tmp, fps=Fraction(fps), width=width_px, height=height_px) as writer:
        for i in range(n):
            t = i / n
            breath = BREATH_SCALE * (1 - math.cos(2 * math.pi * BREATH_CYCLES * t)) / 2
            angle = SWAY_DEG * (1 - math.cos(2 * math.pi * t)) / 2
            m = cv2.getRotationMatrix2D(pivot, angle, 1.0)
            m[1, :] *= 1 + breath
            m[1, 2] -= pivot[1] * breath
            m[:, 2] -= (mx, my)
            frame = cv2.warpAffine(base, m, (width_px, height_px), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT)
            writer.write_frame(frame)
    tmp.rename(out)
    return out


def long_speech(names: tuple[str, ...] = HELD_OUT_SPEECH + TUNE_SPEECH, *, pause_s: float = PAUSE_S) -> np.ndarray:
    """The recordings `names` from ../shared/data joined with pauses: (n,) float32 mono at 16 kHz."""
    gap = np.zeros(int(pause_s * SAMPLE_RATE_HZ), np.float32)
    parts = [gap]
    for name in names:
        parts += [load_audio(SHARED_DATA / name).samples, gap]
    return np.concatenate(parts)
