"""Judge rendered videos as the project's outside judge does: lips measured in the pixels.

Renders speech onto an avatar through the real pipeline, then runs a face-landmark detector on
every output frame to measure the inner-lip opening (gap over eye distance), and compares it with
English phone labels from pocketsphinx:

- auc: P(lips more open on a random open-vowel frame than on a random P/B/M frame); people
  filmed talking score 0.65-0.82, the goal is > 0.80
- best_offset: the video shift (frames) at which that AUC is highest (goal: within one frame)
- silence_closed: share of mid-silence frames whose lips are as closed as the avatar at rest
- step_p95: 95th percentile of |opening[i+1] - opening[i]| over the opening's range (people: <= ~1/3)
- face_found: share of output frames in which the detector still finds the face

    python bench/sync_eval.py                 # the real avatars x recordings in ../shared/data
    python bench/sync_eval.py VIDEO WAV ...   # your own pairs
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2  # noqa: F401
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driver_eval import BILABIALS, OPEN_VOWELS, SILENCE, auc, frame_phones, recognise_phones  # noqa: E402
from lipsync_cli.media.audio import load_audio  # noqa: E402
from lipsync_cli.media.face import FaceTracker, mouth_open_ratio  # noqa: E402
from lipsync_cli.render.pipeline import RenderOptions, render  # noqa: E402
from lipsync_cli.media.store import ModelStore  # noqa: E402
from lipsync_cli.media.video import iter_frames  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIRS = [
    ("speaker_man_1080x1920_25fps.mp4", "speech_48k_stereo_8s.wav"),
    ("illustrated_704x1216_25fps.mp4", "speech_44k_stereo_7s.wav"),
    (str(Path(__file__).resolve().parents[1] / "samples" / "avatar.mp4"), "speech_16k_mono_20s.wav"),
]
MAX_OFFSET_FRAMES = 3


def measure_openings(video: Path) -> tuple[np.ndarray, float]:
    """Inner-lip gap / eye distance in every frame of `video` (NaN where no face), and the face-found share."""
    tracker = FaceTracker()
    opens = []
    for frame in iter_frames(video):
        res = tracker.track(frame)
        opens.append(float(mouth_open_ratio(res.points)) if res is not None else np.nan)
    opens = np.array(opens)
    return opens, float(np.mean(~np.isnan(opens)))


def shifted_auc(opens: np.ndarray, labels: list, shift: int) -> float:
    """AUC with the video moved `shift` frames later than the audio labels."""
    vowel, bilabial = [], []
    for i, lab in enumerate(labels):
        j = i + shift
        if 0 <= j < len(opens) and not np.isnan(opens[j]):
            if lab in OPEN_VOWELS:
                vowel.append(opens[j])
            elif lab in BILABIALS:
                bilabial.append(opens[j])
    return auc(np.array(vowel), np.array(bilabial))


def evaluate(video: Path, speech: Path, *, store: ModelStore, work_dir: Path) -> dict[str, float]:
    """Render `speech` onto `video` and judge the result (see the module docstring)."""
    out = work_dir / f"{video.stem}-{speech.stem}.mp4"
    render(speech, out, options=RenderOptions(model=str(video)), store=store)
    model = store.get(video)
    opens, found = measure_openings(out)
    labels = frame_phones(recognise_phones(load_audio(speech).samples), len(opens), fps=model.fps,
                          middle_only=True)
    by_shift = {s: shifted_auc(opens, labels, s) for s in range(-MAX_OFFSET_FRAMES, MAX_OFFSET_FRAMES + 1)}
    best = max(by_shift, key=lambda s: by_shift[s])
    rest = float(np.percentile(model.mouth_open, 5))
    silent = np.array([lab == SILENCE for lab in labels]) & ~np.isnan(opens)
    valid = opens[~np.isnan(opens)]
    span = float(np.percentile(valid, 99) - np.percentile(valid, 1)) or 1.0
    steps = np.abs(np.diff(opens))
    return {
        "auc": by_shift[0],
        "best_offset": float(best),
        "auc_best": by_shift[best],
        "silence_closed": float(np.mean(opens[silent] <= rest + 0.03)) if silent.any() else float("nan"),
        "step_p95": float(np.nanpercentile(steps, 95) / span),
        "face_found": found,
        "frames": float(len(opens)),
    }


def main(argv: list[str]) -> None:
    pairs = list(zip(argv[::2], argv[1::2])) if argv else [(str(SHARED / v), str(SHARED / a)) for v, a in PAIRS]
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(cache_dir=Path(tmp) / "cache")
        print(f"{'avatar':<34} {'speech':<26} auc   offset  silence_closed  step_p95  face_found")
        for video, speech in pairs:
            r = evaluate(Path(video), Path(speech), store=store, work_dir=Path(tmp))
            print(f"{Path(video).stem[:34]:<34} {Path(speech).stem[:26]:<26} {r['auc']:.2f}  {r['best_offset']:+.0f}"
                  f"      {r['silence_closed']:.2f}            {r['step_p95']:.2f}      {r['face_found']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
