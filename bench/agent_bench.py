"""How fast the avatar starts speaking an agent's answer: from the first assistant audio delta the
server sends to the first frame shown with the mouth open.

    python bench/agent_bench.py [--turns 4]

Runs `lipsync live --agent openai` without a window against the fake Realtime server of the tests
(tests/fake_realtime.py, driven by the real openai SDK on loopback). The user's turns are espeak-ng
speech played as the microphone; every answer is espeak-ng speech too, trimmed to start with sound.
An open mouth is read from the shown frame itself: its inner mouth differs from the model's own.
Goal: < 100 ms. Also prints the frames shown and dropped (goal 0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av, as everywhere a window may open)
import numpy as np

from common import REPO, SAMPLE_VIDEO

sys.path.insert(0, str(REPO / "tests"))

from fake_realtime import FakeRealtime  # noqa: E402
from live_support import inner_mouth_diff  # noqa: E402
from lipsync_cli.live.agent import REALTIME_RATE_HZ, AgentOptions  # noqa: E402
from lipsync_cli.media.audio import load_audio, resample, to_mono  # noqa: E402
from lipsync_cli.live.session import LiveOptions, run_live  # noqa: E402
from lipsync_cli.media.store import ModelStore  # noqa: E402

OPEN_MOUTH_DIFF = 6.0  # mean abs difference of the inner mouth from the model's own that counts as open
TURN_GAP_S = 4.0  # silence after each question: the answer plays meanwhile


def _speech(path: Path, text: str) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True)
    clip = load_audio(path)
    return resample(to_mono(clip.original), from_rate_hz=clip.original_rate_hz, to_rate_hz=REALTIME_RATE_HZ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SAMPLE_VIDEO))
    parser.add_argument("--turns", type=int, default=4)  # about 22 s
    args = parser.parse_args()

    import soundfile as sf

    store = ModelStore()
    model = store.get(store.resolve(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        question = _speech(Path(tmp) / "q.wav", "What is the weather like?")
        answer = _speech(Path(tmp) / "a.wav", "It is sunny and warm today.")
        answer = answer[int(np.argmax(np.abs(answer) > 0.02)):]  # the answer starts with sound
        silence = np.zeros(int(TURN_GAP_S * REALTIME_RATE_HZ), np.float32)
        user = np.concatenate([silence] + [np.concatenate([question, silence]) for _ in range(args.turns)])
        user_wav = Path(tmp) / "user.wav"
        sf.write(str(user_wav), user, REALTIME_RATE_HZ)
        opened: list[float] = []  # when frames with an open mouth were shown
        lock = threading.Lock()

        def on_frame(frame, slot, from_service):
            if inner_mouth_diff(frame, model, slot) > OPEN_MOUTH_DIFF:
                with lock:
                    opened.append(time.monotonic())

        with FakeRealtime(answer, answer_text="It is sunny and warm today.") as fake:
            os.environ["OPENAI_API_KEY"] = os.environ.get("OPENAI_API_KEY") or "sk-bench"  # check_agent wants one
            print(f"{args.turns} turns against the fake Realtime server at {fake.base_url} ...")
            load_before = os.getloadavg()[0]
            summary = run_live(LiveOptions(model=args.model, input=user_wav, window=False,
                                 agent=AgentOptions(base_url=fake.base_url),
                                 duration_s=len(user) / REALTIME_RATE_HZ + 1.0), store=store, on_frame=on_frame)
            firsts = [t for _, t, kind in fake.sent if kind == "response.output_audio.delta"]
            starts = [t for k, t in enumerate(firsts) if k == 0 or t - firsts[k - 1] > 1.0]
    latencies_ms = []
    for start in starts:
        after = [t for t in opened if t >= start]
        if after:
            latencies_ms.append(1000 * (after[0] - start))
    shown = ", ".join(f"{v:.0f}" for v in latencies_ms)
    print(f"first answer delta -> first open mouth shown: {shown} ms "
          f"(median {np.median(latencies_ms):.0f} ms; goal < 100 ms)" if latencies_ms else "no open mouth seen")
    print(f"frames shown {summary.frames_shown}, dropped {summary.frames_dropped} (goal 0), idle {summary.idle_frames}"
          f" over {summary.seconds:.1f} s; sound->screen p50 {summary.latency_p50_ms:.0f} ms, "
          f"p95 {summary.latency_p95_ms:.0f} ms (the picture against its sound: 0 is in sync)   "
          f"[load {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores]")


if __name__ == "__main__":
    main()
