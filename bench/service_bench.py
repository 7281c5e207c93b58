"""Throughput and live latency of the lip-sync gRPC service, through real servers on loopback.

    python bench/service_bench.py [--model avatar] [--audio SPEECH.wav] [--repeat 3]

Prints, with two baselines measured in the same run (JPEG-encoding the model's own mouth regions,
the least any service must do per frame; and `engine.render_clip` in this process, the same work
without gRPC or JPEG, so the difference is what the wire costs):

- mouth frames per second of RenderClip with 1 and 2 concurrent calls on one server process
  (threads), and on two server processes behind one round-robin client; per core as well, both
  as wall-clock frames/s over the cores used and as frames per second of the servers' CPU time
  (which other work on a shared machine does not distort). Goal: >= 300 frames/s on 2 cores. The
  client decodes every JPEG back to an array (it hands out `engine.MouthFrame`s), in this process.
- live latency per 40 ms chunk of StreamAudio, fed in real time: from sending a chunk to receiving
  the frame it completed, p50 and p95. Goal: p95 < 15 ms.

Servers run in their own processes (started with `spawn`: gRPC does not survive fork), so the
client's work does not share their interpreter.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from common import REPO, SHARED_DATA
from lipsync_cli.core.engine import WIRE_JPEG_QUALITY, render_clip
from lipsync_cli.core.generators import make_generator
from lipsync_cli.media.audio import load_audio
from lipsync_cli.media.store import ModelStore
from lipsync_cli.rpc.client import LipSyncClient
from lipsync_cli.rpc.service import create_server

DEFAULT_AUDIO = SHARED_DATA / "speech_48k_stereo_8s.wav"
FALLBACK_AUDIO = REPO / "samples" / "speech.wav"
CHUNK_MS = 40
GOAL_FRAMES_PER_S = 300
GOAL_P95_MS = 15.0


def _serve(cache_dir: str | None, ports: mp.Queue, stop: mp.Event) -> None:
    """A server process: one service on a free loopback port until `stop` is set."""
    server, port = create_server(store=ModelStore(cache_dir=Path(cache_dir) if cache_dir else None))
    ports.put(port)
    stop.wait()
    server.stop(grace=None)


class Servers:
    """`count` server processes; `target` lists them all (round-robin)."""

    def __init__(self, count: int, cache_dir: str | None):
        ctx = mp.get_context("spawn")
        ports, self.stop = ctx.Queue(), ctx.Event()
        self.procs = [ctx.Process(target=_serve, args=(cache_dir, ports, self.stop), daemon=True)
                      for _ in range(count)]
        for p in self.procs:
            p.start()
        self.target = ",".join(f"127.0.0.1:{ports.get(timeout=120)}" for _ in self.procs)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server processes have used so far."""
        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self.procs)

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=10)


def jpeg_baseline(model, repeat: int) -> float:
    """JPEG encodes per second of the model's 320x320 mouth regions (one thread)."""
    regions = [model.region(i) for i in range(model.n_frames)]
    start = time.perf_counter()
    for _ in range(repeat):
        for region in regions:
            cv2.imencode(".jpg", region, [cv2.IMWRITE_JPEG_QUALITY, WIRE_JPEG_QUALITY])
    return repeat * len(regions) / (time.perf_counter() - start)


def engine_baseline(model, audio, repeat: int) -> float:
    """Frames per second of `engine.render_clip` in this process (one thread, no gRPC, no JPEG)."""
    generator = make_generator()
    sum(1 for _ in render_clip(model, audio.samples, generator=generator))  # warm: generator profile
    start, frames = time.perf_counter(), 0
    for _ in range(repeat):
        frames += sum(1 for _ in render_clip(model, audio.samples, generator=generator))
    return frames / (time.perf_counter() - start)


def clip_throughput(servers: Servers, model: str, audio, calls: int, repeat: int) -> tuple[float, float]:
    """With `calls` RenderClip calls at once, each rendering the clip `repeat` times: frames per
    second of wall-clock time and frames per second of the servers' CPU time."""
    with LipSyncClient(servers.target) as client:
        client.wait_ready(30)
        for _ in range(calls):  # warm every server: model load, generator profile
            sum(1 for _ in client.render_clip(model, audio.original, audio.original_rate_hz))
        counts = [0] * calls

        def work(slot: int) -> None:
            for _ in range(repeat):
                counts[slot] += sum(1 for _ in client.render_clip(model, audio.original, audio.original_rate_hz))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(calls)]
        start, start_cpu_s = time.perf_counter(), servers.cpu_s()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - start), sum(counts) / (servers.cpu_s() - start_cpu_s)


def live_latency_ms(target: str, model: str, audio) -> np.ndarray:
    """Per chunk that completes a frame: ms from sending the chunk to receiving that frame."""
    rate = audio.original_rate_hz
    chunk = rate * CHUNK_MS // 1000
    pieces = [audio.original[i:i + chunk] for i in range(0, len(audio.original), chunk)]

    def paced():
        start = time.monotonic()
        for k, piece in enumerate(pieces):
            # real time: chunk k leaves when its audio would have been captured
            time.sleep(max(0.0, start + k * CHUNK_MS / 1000 - time.monotonic()))
            yield piece, time.monotonic()

    latencies, seen = [], set()
    with LipSyncClient(target) as client:
        client.wait_ready(30)
        for frame in client.stream_audio(model, paced(), rate, audio.original.shape[1]):
            if frame.captured_at_s not in seen:  # the first frame a chunk completed: the chunk's latency
                seen.add(frame.captured_at_s)
                latencies.append(1000 * (time.monotonic() - frame.captured_at_s))
    return np.array(latencies[:-1])  # the last frames come from the flush at the end, not from a chunk


def main() -> None:
    parser = argparse.ArgumentParser(description="Throughput and live latency of the lip-sync service.")
    parser.add_argument("--model", default="avatar", help="model name (default: the bundled sample)")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO if DEFAULT_AUDIO.exists() else FALLBACK_AUDIO)
    parser.add_argument("--cache-dir", help="model cache folder (default: the usual one)")
    parser.add_argument("--repeat", type=int, default=3, help="renders of the clip per call")
    args = parser.parse_args()

    store = ModelStore(cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    model = store.get(args.model, names_only=True)  # prepared here once; the servers load the cache
    audio = load_audio(args.audio)
    print(f"model {model.name}: {model.width}x{model.height}, {float(model.fps):g} fps; audio {args.audio.name}: "
          f"{audio.duration_s:.1f} s at {audio.original_rate_hz} Hz; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine lowers every figure)")

    baseline = jpeg_baseline(model, args.repeat)
    print(f"baseline: JPEG-encode the 320x320 regions: {baseline:.0f} frames/s on 1 core")
    print(f"baseline: engine.render_clip in process: {engine_baseline(model, audio, args.repeat):.0f} frames/s "
          "on 1 core")
    print(f"{'RenderClip':<44}{'frames/s':>10}{'per core':>10}{'per CPU-s':>11}{'x baseline':>12}")
    for label, processes, calls in (("1 server process, 1 call", 1, 1),
                                    ("1 server process, 2 calls (threads)", 1, 2),
                                    ("2 server processes, 2 calls (round-robin)", 2, 2)):
        with Servers(processes, args.cache_dir) as servers:
            fps, per_cpu_s = clip_throughput(servers, args.model, audio, calls, args.repeat)
        cores = min(calls, os.cpu_count() or 1)
        print(f"{label:<44}{fps:>10.0f}{fps / cores:>10.0f}{per_cpu_s:>11.0f}{per_cpu_s / baseline:>12.2f}")
    print(f"goal: >= {GOAL_FRAMES_PER_S} frames/s on 2 cores")

    with Servers(1, args.cache_dir) as servers:
        clip_throughput(servers, args.model, audio, 1, 1)  # warm the server
        latency = live_latency_ms(servers.target, args.model, audio)
    p50, p95 = np.percentile(latency, [50, 95])
    encode_ms = 1000 / baseline
    print(f"StreamAudio, {CHUNK_MS} ms chunks in real time, {len(latency)} chunks: latency p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms ({p50 / encode_ms:.1f}x / {p95 / encode_ms:.1f}x one JPEG encode of {encode_ms:.2f} ms); "
          f"goal: p95 < {GOAL_P95_MS:g} ms")


if __name__ == "__main__":
    main()
