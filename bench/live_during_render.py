"""A live stream's frames while the same server renders a long clip (one `lipsync serve`, two users).

One server process; a live StreamAudio fed in real time (20 ms chunks of speech, looped), and after
3 s a RenderClip of the long mix (~65 s) on the same server. Prints the live stream's largest gap
between two frames and its p99 gap, before and while the render runs: a 25 fps stream has 40 ms
gaps. The render's phones are decoded by pocketsphinx, which holds the GIL through a whole clip;
`--in-process-phones` decodes them in the server process (as before the recogniser had a process
of its own) to show what that did to everyone else.

    python bench/live_during_render.py [--in-process-phones] [--model avatar]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av)
import numpy as np

from avatars import long_speech
from common import SHARED_DATA, need
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.rpc.client import LipSyncClient

CHUNK_S = 0.02
RENDER_AFTER_S = 3.0


def _serve(cache_dir: str, in_process_phones: bool, ports: mp.Queue, stop: mp.Event) -> None:
    from lipsync_cli.core import phones
    from lipsync_cli.media.store import ModelStore
    from lipsync_cli.rpc.service import create_server

    if in_process_phones:
        phones.recognise_hops = phones.decode_hops
    server, port = create_server(store=ModelStore(cache_dir=Path(cache_dir)))
    ports.put(port)
    stop.wait()
    server.stop(grace=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in-process-phones", action="store_true")
    ap.add_argument("--model", default="avatar", help="a model the server lists")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/lipsync-bench-cache"))
    args = ap.parse_args()
    speech = load_audio(need(SHARED_DATA / "speech_16k_mono_20s.wav")).samples
    clip = long_speech()
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(str(args.cache_dir), args.in_process_phones, ports, stop), daemon=True)
    proc.start()
    target = f"127.0.0.1:{ports.get(timeout=120)}"
    model = args.model
    arrivals: list[float] = []
    render_span: list[float] = []
    try:
        with LipSyncClient(target) as warm:  # prepare the model and load the service before timing
            list(warm.render_clip(model, speech[:SAMPLE_RATE_HZ, None], SAMPLE_RATE_HZ))

        def chunks():
            step = int(CHUNK_S * SAMPLE_RATE_HZ)
            t0 = time.perf_counter()
            for k, i in enumerate(range(0, len(clip), step)):
                time.sleep(max(0.0, t0 + k * CHUNK_S - time.perf_counter()))
                yield np.resize(speech, i + step)[i:], time.perf_counter()
                if render_span and len(render_span) == 2 and time.perf_counter() > render_span[1] + 2:
                    return

        def render():
            time.sleep(RENDER_AFTER_S)
            with LipSyncClient(target) as client:
                render_span.append(time.perf_counter())
                frames = client.render_clip(model, clip[:, None], SAMPLE_RATE_HZ)
                next(frames)  # the phones are decoded before the first frame
                render_span.append(time.perf_counter())
                for _ in frames:
                    pass

        renderer = threading.Thread(target=render)
        renderer.start()
        with LipSyncClient(target) as live:
            for _ in live.stream_audio(model, chunks(), SAMPLE_RATE_HZ, 1):
                arrivals.append(time.perf_counter())
        renderer.join()
    finally:
        stop.set()
        proc.join(timeout=10)
    t = np.array(arrivals)
    gaps_ms = np.diff(t) * 1000
    before = gaps_ms[t[1:] < render_span[0]]
    during = gaps_ms[(t[1:] >= render_span[0]) & (t[1:] <= render_span[1] + 0.5)]
    mode = "in the server process" if args.in_process_phones else "in a process of their own"
    print(f"render's phones decoded {mode}; they took {render_span[1] - render_span[0]:.2f} s "
          f"for {len(clip) / SAMPLE_RATE_HZ:.0f} s of speech")
    print(f"live frame gaps before the render: largest {before.max():.0f} ms, p99 {np.percentile(before, 99):.0f} ms")
    print(f"live frame gaps while its phones are decoded: largest {during.max():.0f} ms, "
          f"p99 {np.percentile(during, 99):.0f} ms ({len(during)} frames)")


if __name__ == "__main__":
    main()
