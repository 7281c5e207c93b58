"""Mouth frames per second of the weight-free generator alone (CPU time, one thread).

The driver's parameters for the speech are worked out first; then only the generator's
`render` of every frame is timed (best of --repeat passes), so driver changes do not move the
figure. To compare revisions in the same run, point PYTHONPATH at a worktree of the other one:

    python bench/generator_speed.py [--models avatar,speaker] [--speech WAV] [--cache-dir DIR]
    PYTHONPATH=/tmp/old python bench/generator_speed.py ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2

from common import SAMPLE_VIDEO, SHARED_DATA, SPEAKER_VIDEO, need
from lipsync_cli.core.driver import drive
from lipsync_cli.core.engine import frames_for
from lipsync_cli.core.generators import make_generator
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.media.store import ModelStore

MODELS = {"avatar": SAMPLE_VIDEO, "speaker": SPEAKER_VIDEO, "drawn": SHARED_DATA / "illustrated_704x1216_25fps.mp4"}
CLIP_S = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="avatar,speaker,drawn", help="names above, or video paths")
    ap.add_argument("--speech", type=Path, default=SHARED_DATA / "speech_44k_stereo_15s_b.wav")
    ap.add_argument("--cache-dir", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as render and serve run it
    store = ModelStore(cache_dir=args.cache_dir)
    samples = load_audio(need(args.speech)).samples[: CLIP_S * SAMPLE_RATE_HZ]
    for spec in args.models.split(","):
        video = need(MODELS.get(spec, Path(spec)))
        model = store.get(video.resolve())
        params = list(drive(samples, fps=model.fps))
        generator = make_generator("own")
        generator.open_stream(model)  # its per-model work, once, outside the clock
        best = 0.0
        for _ in range(args.repeat):
            t0 = time.thread_time()
            n = sum(1 for _ in frames_for(model, generator, params, samples))
            best = max(best, n / max(time.thread_time() - t0, 1e-9))
        print(f"{video.stem:40s} {best:6.0f} frames/s of CPU time ({n} frames, best of {args.repeat})")


if __name__ == "__main__":
    main()
