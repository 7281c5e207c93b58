"""Latency and smoothness of `lipsync live` with a file played as the microphone, without a window.

    python bench/live_bench.py [--model avatar] [--audio SPEECH.wav] [--seconds 60]

Loops the speech to `--seconds`, plays it through the live path in real time (the pacing `--input`
uses: CHUNK_MS blocks released on the clock) into a headless sink, and prints:

- latency from a block's capture to the frame it completes being ready, p50 and p95, and to it
  being shown (the sink here); the sound card's own buffer is not included. Goal: p95 < 60 ms.
- frames shown and dropped. Goal: 0 dropped at 25 fps.
- time from starting the session to the first frame from the service, with a prepared model.
  Goal: < 1.5 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av, as everywhere a window may open)
import numpy as np

from common import SAMPLE_VIDEO, SPEECH_20S, need
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.live.session import LiveOptions, run_live
from lipsync_cli.media.store import ModelStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SAMPLE_VIDEO))
    parser.add_argument("--audio", type=Path, default=SPEECH_20S)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    import soundfile as sf

    store = ModelStore()
    store.get(store.resolve(args.model))  # prepared before the clock starts
    speech = load_audio(need(args.audio)).samples
    looped = np.tile(speech, int(np.ceil(args.seconds * SAMPLE_RATE_HZ / len(speech))))
    looped = looped[: int(args.seconds * SAMPLE_RATE_HZ)]
    messages: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "looped.wav"
        sf.write(str(clip), looped, SAMPLE_RATE_HZ)
        print(f"{args.audio.name} looped to {args.seconds:.0f} s through the live path (real time)...")
        t0 = time.perf_counter()
        summary = run_live(LiveOptions(model=args.model, input=clip, window=False), store=store,
                           on_message=messages.append)
        wall_s = time.perf_counter() - t0
    for m in messages:
        print(f"  ({m})")
    print(f"capture -> frame ready:  p50 {summary.ready_p50_ms:6.1f} ms   p95 {summary.ready_p95_ms:6.1f} ms"
          f"   (goal p95 < 60 ms)")
    print(f"capture -> frame shown:  p50 {summary.latency_p50_ms:6.1f} ms   p95 {summary.latency_p95_ms:6.1f} ms")
    print(f"frames shown {summary.frames_shown}, dropped {summary.frames_dropped} (goal 0), "
          f"idle {summary.idle_frames}, fallbacks {summary.fallbacks}, over {wall_s:.1f} s")
    print(f"first frame after start: {summary.first_frame_s:.2f} s (goal < 1.5 s)")


if __name__ == "__main__":
    main()
