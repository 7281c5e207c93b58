"""Soak: how many real-time live streams one `lipsync serve` holds, whether it holds them for long,
and whether 300 renders in one process leak (issue 14, item 4).

1. Ramp: 1, 2, 3, ... concurrent live streams against one `lipsync serve` (a subprocess, started
   with --max-streams above the ramp), each sending the sample speech in 40 ms chunks paced in
   real time, for --step-s each; a level passes with 0 late frames (a frame is late when it
   arrives more than LATE_MS after the chunk that completed it was sent) and 0 errors. The
   largest passing level is the capacity.
2. Hold: that many streams for --minutes: the server's resident memory every SAMPLE_S (growth
   first minute -> last), errors, late frames, frame time (chunk sent -> frame in) p50/p99, and
   a health check's answer time while the streams run.
3. Renders: --renders consecutive `render()` calls in this process (embedded service) of a short
   clip: resident memory, open files and threads after each, after WARMUP_RENDERS.

    python bench/soak.py                    # the full run: ramp, 10 min, 300 renders (~25 min here)
    python bench/soak.py --minutes 2 --renders 50
    python bench/soak.py --streams 4 --renders 0     # hold 4 streams for 10 min, no ramp

Clients run in this process on raw stubs (no JPEG decoding), so they cost the server's machine
as little as they can; on a machine shared with other work the figures are lower bounds.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lipsync_cli.rpc  # noqa: F401  (first: it quiets gRPC's start-up logging before grpc is imported)
import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, show  # noqa: E402

from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio  # noqa: E402
from lipsync_cli.rpc.proto_gen import lipsync_pb2, lipsync_pb2_grpc  # noqa: E402

SPEECH = REPO / "samples" / "speech.wav"
MODEL = "avatar"
CHUNK_MS = 40
FPS = 25
LATE_MS = 200.0  # a frame later than this after its audio was sent would show visibly behind the voice
SAMPLE_S = 5.0  # memory sampling period of the hold
WARMUP_RENDERS = 10  # renders before the leak baseline is taken (caches, pools, first-call imports)
RENDER_CLIP_S = 2.0
MAX_RAMP = 64


class Stream(threading.Thread):
    """One live stream paced in real time until `stop`; records each frame's time from chunk sent to frame in."""

    def __init__(self, target: str, pcm: bytes, stop: threading.Event):
        super().__init__(daemon=True)
        self.target, self.pcm, self.stop = target, pcm, stop
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []

    def _requests(self):
        fmt = lipsync_pb2.AudioFormat(sample_rate_hz=SAMPLE_RATE_HZ, channels=1, sample_type=lipsync_pb2.PCM_S16LE)
        yield lipsync_pb2.AudioChunk(start=lipsync_pb2.StreamStart(model=MODEL, format=fmt))
        step = 2 * SAMPLE_RATE_HZ * CHUNK_MS // 1000
        t0, k = time.monotonic(), 0
        while not self.stop.is_set():
            at = t0 + k * CHUNK_MS / 1000
            time.sleep(max(0.0, at - time.monotonic()))
            offset = (k * step) % (len(self.pcm) - step)
            yield lipsync_pb2.AudioChunk(audio=self.pcm[offset:offset + step], captured_at_s=time.monotonic())
            k += 1

    def run(self) -> None:
        try:
            with grpc.insecure_channel(self.target) as channel:
                for reply in lipsync_pb2_grpc.LipSyncStub(channel).StreamAudio(self._requests()):
                    self.latencies_ms.append(1000 * (time.monotonic() - reply.captured_at_s))
        except grpc.RpcError as exc:
            self.errors.append(f"{exc.code().name}: {exc.details()}")


def run_streams(target: str, n: int, seconds: float, pcm: bytes, *, on_sample=None) -> list[Stream]:
    stop = threading.Event()
    streams = [Stream(target, pcm, stop) for _ in range(n)]
    for s in streams:
        s.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(SAMPLE_S, max(0.0, end - time.monotonic())))
        if on_sample is not None:
            on_sample()
    stop.set()
    for s in streams:
        s.join(timeout=10)
    return streams


def health_ms(target: str) -> float:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected
        t0 = time.perf_counter()
        stub.Check(health_pb2.HealthCheckRequest(service="lipsync.v1.LipSync"), timeout=10)
        return 1000 * (time.perf_counter() - t0)


def start_serve(max_streams: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_cli", "serve", "--port", "0", "--grpc-port", "0",
                             "--max-streams", str(max_streams)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        found = re.search(r"gRPC lip-sync service: (\S+)", line)
        if found:
            return proc, found.group(1)
    raise SystemExit("lipsync serve did not start")


def summary(streams: list[Stream]) -> tuple[int, int, list[float]]:
    lat = [x for s in streams for x in s.latencies_ms]
    late = sum(x > LATE_MS for x in lat)
    errors = sum(len(s.errors) for s in streams)
    return late, errors, lat


def soak_streams(minutes: float, step_s: float, streams: int | None = None) -> None:
    pcm = (np.clip(load_audio(SPEECH).samples, -1, 1) * 32767).astype("<i2").tobytes()
    proc, target = start_serve(MAX_RAMP + 1)
    server = psutil.Process(proc.pid)
    try:
        run_streams(target, 1, 3.0, pcm)  # warm: model loaded, first-call imports done
        best = streams or 0
        for n in range(1, 1 if streams else MAX_RAMP + 1):
            late, errors, lat = summary(run_streams(target, n, step_s, pcm))
            p99 = float(np.percentile(lat, 99)) if lat else float("nan")
            print(f"ramp {n:>2} streams: {len(lat)} frames, {late} late, {errors} errors, p99 {p99:.0f} ms",
                  flush=True)
            if late or errors or not lat:
                break
            best = n
        if best == 0:
            print("not even one stream runs in real time here")
            return
        rss: list[tuple[float, float]] = []
        t0 = time.monotonic()
        checks: list[float] = []

        def sample():
            rss.append((time.monotonic() - t0, server.memory_info().rss / 2**20))
            checks.append(health_ms(target))

        streams = run_streams(target, best, 60 * minutes, pcm, on_sample=sample)
        late, errors, lat = summary(streams)
        first_min = [m for t, m in rss if t <= 60] or [rss[0][1]]
        last_min = [m for t, m in rss if t >= rss[-1][0] - 60]
        growth = 100 * (statistics.mean(last_min) / statistics.mean(first_min) - 1)
        show([("streams held", f"{best} at {FPS} fps for {minutes:g} min"),
              ("frames", f"{len(lat)}, {late} late (> {LATE_MS:.0f} ms), {errors} errors"),
              ("frame time", f"p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms, "
                             f"max {max(lat):.0f} ms"),
              ("server RSS", f"{first_min[0]:.0f} MiB -> {rss[-1][1]:.0f} MiB; mean of last vs first minute "
                             f"{growth:+.1f}%"),
              ("RSS curve (MiB)", " ".join(f"{m:.0f}" for _, m in rss[::max(1, len(rss) // 12)])),
              ("health under load", f"p50 {statistics.median(checks):.1f} ms, max {max(checks):.1f} ms")])
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def soak_renders(renders: int) -> None:
    import soundfile as sf

    from lipsync_cli.media.store import ModelStore
    from lipsync_cli.render.pipeline import RenderOptions, render

    me = psutil.Process()
    store = ModelStore()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.wav"
        samples = load_audio(SPEECH).samples[: int(RENDER_CLIP_S * SAMPLE_RATE_HZ)]
        sf.write(str(clip), samples, SAMPLE_RATE_HZ)
        rows = []
        t0 = time.monotonic()
        for i in range(renders):
            render(clip, Path(tmp) / "out.mp4", options=RenderOptions(), store=store)
            rows.append((me.memory_info().rss / 2**20, me.num_fds(), me.num_threads()))
            if (i + 1) % 10 == 0:
                print(f"render {i + 1}: RSS {rows[-1][0]:.0f} MiB, {rows[-1][1]} files, {rows[-1][2]} threads",
                      flush=True)
        seconds = time.monotonic() - t0
    base = rows[min(WARMUP_RENDERS, len(rows) - 1)]
    last = rows[-1]
    show([("renders", f"{renders} of {RENDER_CLIP_S:g} s in one process, {seconds:.0f} s"),
          ("RSS", f"after {WARMUP_RENDERS}: {base[0]:.0f} MiB, after {renders}: {last[0]:.0f} MiB "
                  f"({100 * (last[0] / base[0] - 1):+.1f}%)"),
          ("open files", f"{base[1]} -> {last[1]}"),
          ("threads", f"{base[2]} -> {last[2]}"),
          ("RSS curve (MiB)", " ".join(f"{r[0]:.0f}" for r in rows[::max(1, len(rows) // 12)]))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the hold phase runs")
    parser.add_argument("--step-s", type=float, default=10.0, help="how long each ramp level runs")
    parser.add_argument("--renders", type=int, default=300, help="consecutive renders in one process")
    parser.add_argument("--streams", type=int, help="hold this many streams (no ramp)")
    parser.add_argument("--skip-streams", action="store_true")
    args = parser.parse_args()
    if not args.skip_streams:
        soak_streams(args.minutes, args.step_s, args.streams)
    if args.renders:
        soak_renders(args.renders)


if __name__ == "__main__":
    main()
