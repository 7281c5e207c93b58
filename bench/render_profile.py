"""Where a render's CPU goes, per thread, and how long it waits for its first frame.

Renders 15 s of speech onto the 1080x1920 speaker in this process (embedded gRPC service, as
`lipsync render` does) while reading every thread's CPU time from /proc, and prints CPU per
output frame for each kind of thread:

- `lipsync-compose`: model frames decoded into the encoder's yuv420p frames, mouths pasted;
- `lipsync-rpc`: the service (phones, driver, generator, the wire's JPEG and protobuf);
- `MainThread`: the gRPC client, the encoder calls, AAC;
- `native`: threads Python did not start (x264's workers, gRPC's core);
- `other Python (gRPC)`: gRPC's own Python threads.

and, for comparison, the CPU per frame of `ffmpeg` transcoding the same frames with the render's
encoder settings (its decoder and x264 together). Linux only (/proc).

    python bench/render_profile.py [--video VIDEO] [--speech WAV] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av)

from common import SHARED_DATA, SPEAKER_VIDEO, need, show
from render_bench import transcode_s
from lipsync_cli.media.store import ModelStore
from lipsync_cli.render.pipeline import RenderOptions, render
from lipsync_cli.rpc import client as rpc_client

POLL_S = 0.05


class ThreadClock:
    """CPU seconds of every thread of this process from when it starts, polled until stopped (threads
    that end keep their last reading), grouped by the Python thread name (`native` for the others)."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.names: dict[str, str] = {}
        self._at_start: dict[str, float] = {}  # threads already running: their CPU time before the clock
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="profile-poll", daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _poll(self) -> None:
        while not self._stop.is_set():
            for t in threading.enumerate():
                if t.native_id:
                    self.names[str(t.native_id)] = _kind(t.name)
            for tid in os.listdir("/proc/self/task"):
                try:
                    fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                seconds = (int(fields[11]) + int(fields[12])) / self._tick
                self._at_start.setdefault(tid, 0.0 if self._started else seconds)
                self.cpu_s[tid] = seconds - self._at_start[tid]
            self._started = True
            time.sleep(POLL_S)

    def __enter__(self) -> "ThreadClock":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(2 * POLL_S)
        self._stop.set()
        self._thread.join()

    def by_kind(self) -> Counter:
        kinds: Counter = Counter()
        for tid, seconds in self.cpu_s.items():
            kinds[self.names.get(tid, "native")] += seconds
        kinds.pop("profile-poll", None)
        return kinds


def _kind(thread_name: str) -> str:
    """A Python thread's group: our pools by prefix (`lipsync-compose_0` -> `lipsync-compose`), the
    main thread, and the other Python threads (gRPC's)."""
    if thread_name.startswith("lipsync-"):
        return thread_name.split("_")[0]
    return thread_name if thread_name in ("MainThread", "profile-poll") else "other Python (gRPC)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=SPEAKER_VIDEO)
    ap.add_argument("--speech", type=Path, default=SHARED_DATA / "speech_44k_stereo_15s_b.wav")
    ap.add_argument("--cache-dir", type=Path, help="model cache folder (default: the usual one)")
    args = ap.parse_args()
    store = ModelStore(cache_dir=args.cache_dir)
    store.get(need(args.video).resolve())  # prepared and loaded before the clocks start
    first_frame: list[float] = []
    decode = rpc_client.from_proto

    def timed_from_proto(*a, **k):
        if not first_frame:
            first_frame.append(time.perf_counter())
        return decode(*a, **k)

    rpc_client.from_proto = timed_from_proto
    with tempfile.TemporaryDirectory() as tmp:
        with ThreadClock() as clock:
            t0 = time.perf_counter()
            summary = render(need(args.speech), Path(tmp) / "out.mp4", options=RenderOptions(model=str(args.video)),
                             store=store)
            wall_s = time.perf_counter() - t0
        _, ffmpeg_s = transcode_s(args.video, summary.frames, Path(tmp) / "transcode.mp4")
    n = summary.frames
    rows = [("frames", f"{n} at {summary.width}x{summary.height}"),
            ("render wall", f"{wall_s:.1f} s; first frame back after {first_frame[0] - t0:.2f} s"
                            " (audio sent, phones recognised, the generator's per-model work)")]
    kinds = clock.by_kind()
    for name, seconds in kinds.most_common():
        rows.append((f"CPU {name}", f"{1000 * seconds / n:5.1f} ms/frame"))
    rows.append(("CPU render, all", f"{1000 * sum(kinds.values()) / n:5.1f} ms/frame"))
    rows.append(("CPU ffmpeg transcode", f"{1000 * ffmpeg_s / n:5.1f} ms/frame (decode + x264, same frames, same settings)"))
    show(rows)


if __name__ == "__main__":
    main()
