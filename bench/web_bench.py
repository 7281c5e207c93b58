"""The browser path, end to end: from the agent's audio arriving in the page to its mouth on the canvas.

    python bench/web_bench.py [--seconds 30] [--pages 1 4]

Starts the real HTTP app with its WebSocket bridge (`create_server(..., generator=...)`), the fake
OpenAI Realtime WebRTC peer of the tests (tests/fake_realtime_webrtc.py: aiortc on loopback, the
20 s speech recording of ../shared/data as the agent's voice, looped with pauses), each in a process
of its own as in production, and Debian's Chromium under Playwright; each page runs
`app.start({mode: "agent"})` and is read from `app.frameLog` after `--seconds`.

Per page count: the latency from the agent's audio arriving (the capture worklet's clock) to the
frame showing its mouth being drawn, `arrived - mouthOf`, p50/p95 (goal p95 <= 150 ms; it includes
the voice delay the page adds so the mouth is on time, which grows when frames come late); the same
to the frame being ready in the page (received and decoded, `readyAt - mouthOf`: what the voice's
delay must cover); the
share of drawn frames within one frame of the audio heard (goal >= 95%); frames dropped per minute
(received but never drawn, goal 0) and audio the server dropped to catch up, seconds per minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, SAMPLE_VIDEO, SPEECH_20S, need, show

sys.path.insert(0, str(REPO))

from lipsync_cli.core.generators import make_generator  # noqa: E402
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio, resample  # noqa: E402
from lipsync_cli.media.store import ModelStore  # noqa: E402
from lipsync_cli.web.http_server import create_server  # noqa: E402
from lipsync_cli.web.options import HttpOptions  # noqa: E402
from tests.fake_realtime_webrtc import RATE_HZ  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PAUSE_S = 2.0  # between the agent's answers: the mouth rests, frames keep coming
GOAL_P95_MS = 150


def _voice(seconds: float) -> np.ndarray:
    """The 20 s recording, with a pause after each pass, as long as the bench runs (48 kHz mono)."""
    speech = resample(load_audio(need(SPEECH_20S)).samples, from_rate_hz=SAMPLE_RATE_HZ, to_rate_hz=RATE_HZ)
    one = np.concatenate([speech, np.zeros(int(PAUSE_S * RATE_HZ), np.float32)])
    return np.tile(one, int(np.ceil((seconds + 10) * RATE_HZ / len(one)))).astype(np.float32)


@contextlib.contextmanager
def _fake_openai(voice: np.ndarray, tmp: Path):
    """The fake Realtime peer in a process of its own: OpenAI's side (Opus, SRTP) must not take the
    server's interpreter from the engine. Yields (base_url, calls_url)."""
    np.save(tmp / "voice.npy", voice)
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_realtime_webrtc.py"), str(tmp / "voice.npy")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("the fake OpenAI peer ended before it served: see its error above")
        urls = json.loads(line)
        yield urls["base_url"], urls["calls_url"]
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _serve(tmp: Path, base_url: str, calls_url: str, conn) -> None:
    """The HTTP app in a process of its own: Playwright's driver connection (it ships every WebSocket
    message to Python) must not share the server's interpreter. Sends the port, serves until told."""
    models = tmp / "models"
    models.mkdir()
    (models / "avatar.mp4").symlink_to(SAMPLE_VIDEO)
    os.environ["OPENAI_BASE_URL"] = base_url  # the token endpoint mints from the fake
    store = ModelStore(cache_dir=tmp / "cache", models_dir=models)
    store.get("avatar", names_only=True)  # prepared before the clock starts
    server, port = create_server(store, HttpOptions(openai_api_key="sk-bench", token_secret=None,
                                                    realtime_calls_url=calls_url, token_rate_per_min=0),
                                 generator=make_generator())
    conn.send(port)
    conn.recv()
    server.stop()


def _run(browser, port: int, n_pages: int, seconds: float) -> dict:
    pages = []
    for _ in range(n_pages):
        page = browser.new_context().new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.app !== undefined")
        page.evaluate("app.modelVideoManager.prepareModel('avatar')")
        pages.append(page)
    for page in pages:
        page.evaluate("app.start({mode: 'agent', model: 'avatar'})")
    time.sleep(seconds)
    latency_ms, ready_ms, synced, delays_ms = [], [], [], []
    dropped_per_min, skipped_s_per_min, watched_s = [], [], []
    for page in pages:
        state = page.evaluate("""() => ({dropped: app.dropped, delay: app.session.delayS, fps: app.session.facts.fps,
          log: app.frameLog.filter((e) => e.session === app.session.id && e.mouthOf !== null)})""")
        page.evaluate("app.stop()")
        log = state["log"]
        latency_ms += [1000 * (e["arrived"] - e["mouthOf"]) for e in log]
        ready_ms += [1000 * (e["readyAt"] - e["mouthOf"]) for e in log if e.get("readyAt") is not None]
        synced += [abs(e["playing"] - e["mouthOf"]) <= 1 / state["fps"] for e in log]
        # per page, over the audio its session received (pages start one after the other)
        minutes = (log[-1]["arrived"] if log else seconds) / 60
        watched_s.append(60 * minutes)
        dropped_per_min.append(state["dropped"] / minutes)
        skipped_s_per_min.append((log[-1]["droppedS"] if log else 0.0) / minutes)
        delays_ms.append(1000 * state["delay"])
        page.context.close()
    p50, p95 = np.percentile(latency_ms, [50, 95]) if latency_ms else (float("nan"), float("nan"))
    r50, r95 = np.percentile(ready_ms, [50, 95]) if ready_ms else (float("nan"), float("nan"))
    return {"pages": n_pages, "seconds": round(float(np.mean(watched_s)), 1), "frames_drawn": len(latency_ms),
            "latency_p50_ms": round(float(p50), 1), "latency_p95_ms": round(float(p95), 1),
            "ready_p50_ms": round(float(r50), 1), "ready_p95_ms": round(float(r95), 1),
            "within_one_frame": round(float(np.mean(synced)) if synced else 0.0, 3),
            "dropped_per_min": round(float(np.mean(dropped_per_min)), 1),
            "server_dropped_s_per_min": round(float(np.mean(skipped_s_per_min)), 2),
            "voice_delay_ms": [round(d) for d in delays_ms]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each run watches its pages")
    parser.add_argument("--pages", type=int, nargs="+", default=[1, 4], help="pages open at once, per run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, _fake_openai(_voice(args.seconds), Path(tmp)) as (base_url, calls_url):
        ctx = multiprocessing.get_context("spawn")
        here, there = ctx.Pipe()
        server = ctx.Process(target=_serve, args=(Path(tmp), base_url, calls_url, there), daemon=True)
        server.start()
        there.close()  # our copy of the child's end: should the child die, recv() ends instead of waiting forever
        try:
            port = here.recv()
        except EOFError:
            raise SystemExit("the server process ended before it served: see its error above") from None
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                    "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                    "--disable-features=WebRtcHideLocalIpsWithMdns"])
                results = [_run(browser, port, n, args.seconds) for n in args.pages]
                browser.close()
        finally:
            here.send("stop")
            server.join(10)
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the end")
    for r in results:
        print(f"\n{r['pages']} page(s), {r['seconds']} s of audio each")
        show([("audio arriving -> mouth drawn p50", f"{r['latency_p50_ms']} ms"),
              ("audio arriving -> mouth drawn p95", f"{r['latency_p95_ms']} ms (goal <= {GOAL_P95_MS})"),
              ("audio arriving -> frame ready p50", f"{r['ready_p50_ms']} ms (in the page, decoded)"),
              ("audio arriving -> frame ready p95", f"{r['ready_p95_ms']} ms (due by the voice's delay + the output latency - half a frame)"),
              ("drawn within a frame of the voice", f"{100 * r['within_one_frame']:.1f}% (goal >= 95%)"),
              ("frames dropped per minute per page", f"{r['dropped_per_min']} (goal 0)"),
              ("audio the server skipped, s/min/page", f"{r['server_dropped_s_per_min']}"),
              ("frames drawn", str(r["frames_drawn"])),
              ("voice delay at the end, per page", f"{r['voice_delay_ms']} ms")])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
