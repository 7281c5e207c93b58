"""Latency and smoothness of `lipsync live`.

    python bench/live_bench.py [--model avatar] [--bursts 20] [--repeat 2] [--audio SPEECH.wav] [--seconds 30]

1. Sound -> screen with the microphone, end to end (the figure a viewer sees): under Xvfb and a
   private PulseAudio, a live session listens to a null sink's monitor as its microphone; speech
   bursts after silence are played into that sink, and the window's mouth is read back from the
   screen (tests/latency_probe.py). Prints p50/p95 from each burst's first sample entering the
   microphone to its mouth on screen (goal p95 <= 100 ms, lookahead included), the session's own
   sound->screen figure beside it (they should agree within a frame), and the frames it dropped.
2. A file played as the microphone in real time into a headless sink, --seconds long: frames
   shown and dropped (goal 0 at 25 fps), capture -> frame ready, and the time to the first frame.

The machine's load is printed with each figure: on a shared machine, repeat (--repeat) and compare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av, as everywhere a window may open)
import numpy as np

from common import REPO, SAMPLE_VIDEO, SPEECH_20S, need

sys.path.insert(0, str(REPO / "tests"))

from live_support import (Unavailable, probe_sound_to_screen, sound_to_screen_ms, start_session,  # noqa: E402
                          virtual_display, virtual_sound)
from lipsync_cli.live.session import LiveOptions, run_live  # noqa: E402
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio  # noqa: E402
from lipsync_cli.media.store import ModelStore  # noqa: E402

GOAL_P95_MS = 100.0
BURST_TEXT = "Ah."  # an open vowel: the mouth opens wide at once
GAP_S = 1.0  # silence after each burst: the mouth comes to rest


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50:5.0f} ms  p95 {p95:5.0f} ms"


def sound_to_screen(model: str, cache_dir: Path, bursts: int, tmp: Path) -> None:
    """Part 1: one session, `bursts` bursts, printed."""
    tmp.mkdir(parents=True, exist_ok=True)
    burst = tmp / "burst.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(burst), BURST_TEXT], check=True)
    with virtual_display() as display, virtual_sound(tmp / "pulse") as sound:
        env = {**os.environ, **sound, "DISPLAY": display}
        load_before = _load()
        session = start_session(env, cache_dir, model=model, duration_s=60 + bursts * 3)
        try:
            if not session.first_frame.wait(60):
                raise RuntimeError(f"the session showed nothing: {session.wait().stderr[-2000:]}")
            time.sleep(1.0)
            result = probe_sound_to_screen(env, video=Path(model), cache_dir=cache_dir, burst=burst, count=bursts,
                                           gap_s=GAP_S)
            subprocess.run(["xdotool", "search", "--sync", "--name", "lipsync live", "windowfocus", "key", "q"],
                           env=env, check=True, timeout=15)
            session.wait(30)
        finally:
            if session.proc.poll() is None:
                session.proc.kill()
    outside = sound_to_screen_ms(result)
    summary = session.summary
    entry = [1000 * (b - a) for a, b in zip(result["onsets_out_s"], result["onsets_in_s"]) if b is not None]
    print(f"  sound->screen, measured outside:  {_pct(outside)}   ({len(outside)}/{bursts} bursts seen; "
          f"goal p95 <= {GOAL_P95_MS:.0f} ms)")
    print(f"  sound->screen, the session's own: p50 {summary['latency_p50_ms']:5.0f} ms  "
          f"p95 {summary['latency_p95_ms']:5.0f} ms   (every frame from the service)")
    print(f"  burst entry, sink output vs its monitor: median {np.median(entry):+.1f} ms")
    print(f"  frames shown {summary['frames_shown']}, dropped {summary['frames_dropped']}, "
          f"idle {summary['idle_frames']}   [{load_before}; after: {_load()}]")


def file_path(model: str, audio: Path, seconds: float, tmp: Path) -> None:
    """Part 2: a file as the microphone, headless, printed."""
    import soundfile as sf

    speech = load_audio(need(audio)).samples
    looped = np.tile(speech, int(np.ceil(seconds * SAMPLE_RATE_HZ / len(speech))))[: int(seconds * SAMPLE_RATE_HZ)]
    clip = tmp / "looped.wav"
    sf.write(str(clip), looped, SAMPLE_RATE_HZ)
    messages: list[str] = []
    load_before = _load()
    summary = run_live(LiveOptions(model=model, input=clip, window=False), store=ModelStore(),
                       on_message=messages.append)
    for m in messages:
        print(f"  ({m})")
    print(f"  capture -> frame ready: p50 {summary.ready_p50_ms:5.1f} ms  p95 {summary.ready_p95_ms:5.1f} ms")
    print(f"  frames shown {summary.frames_shown}, dropped {summary.frames_dropped} (goal 0), "
          f"idle {summary.idle_frames}, first frame after {summary.first_frame_s:.2f} s (goal < 1.5 s)"
          f"   [{load_before}; after: {_load()}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SAMPLE_VIDEO))
    parser.add_argument("--bursts", type=int, default=20, help="part 1's bursts; 0: skip part 1")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--audio", type=Path, default=SPEECH_20S)
    parser.add_argument("--seconds", type=float, default=30.0, help="part 2's length; 0: skip part 2")
    args = parser.parse_args()
    store = ModelStore()
    store.get(store.resolve(args.model))  # prepared before any clock starts
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(1, args.repeat + 1):
            if args.bursts > 0:
                print(f"run {run}/{args.repeat}: microphone (a PulseAudio null sink), window under Xvfb, "
                      f"{args.bursts} bursts of {BURST_TEXT!r}")
                try:
                    sound_to_screen(args.model, store.cache_dir, args.bursts, Path(tmp) / f"run{run}")
                except Unavailable as exc:
                    print(f"  skipped: {exc}")
            if args.seconds > 0:
                print(f"run {run}/{args.repeat}: {args.audio.name} looped to {args.seconds:.0f} s as the "
                      "microphone, headless")
                file_path(args.model, args.audio, args.seconds, Path(tmp))


if __name__ == "__main__":
    main()
