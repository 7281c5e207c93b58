"""The web client and its WebSocket bridge: the protocol from Python, then the page in a real Chromium.

The browser tests drive Debian's Chromium through Playwright (it cannot download its own browsers
here) with a fake microphone that plays a WAV (silence, speech, silence, on a loop) and a fake
OpenAI Realtime peer on 127.0.0.1 (tests/fake_realtime_webrtc.py, aiortc) that answers the page's
SDP offer and speaks a WAV as the agent. They skip, with the reason, when Chromium or Playwright
is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from lipsync_cli.core.engine import render_clip
from lipsync_cli.core.generators import make_generator
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio, resample
from lipsync_cli.media.store import ModelStore
from lipsync_cli.web.bridge import BRIDGE_PATH, decode_frame
from lipsync_cli.web.http_server import create_server
from lipsync_cli.web.options import HttpOptions
from tests.conftest import SAMPLE_SPEECH, SAMPLE_VIDEO, write_wav
from tests.fake_realtime_webrtc import EPHEMERAL_KEY, FakeRealtimeWebRTC

CHROMIUM = Path("/usr/bin/chromium")
MIC_RATE_HZ = 48_000
TINY_MODELS = 6  # one more than the page keeps: the LRU must evict the first
API_KEY = "sk-test-this-key-must-never-reach-the-page"
AGENT_RATE_HZ = 48_000
MIC_P95_SANITY_MS = 600  # a mouth this far behind the voice is broken, whatever the machine's load
MIC_P95_GOAL_MS = 150  # microphone to mouth, on a machine with CPU to spare
MIC_WATCH_S = 9.0


class _Server:
    """The real server from its factory (`create_server`, the app with a generator: the bridge is on)."""

    def __init__(self, store: ModelStore, slots: threading.BoundedSemaphore | None = None,
                 options: HttpOptions | None = None):
        options = options or HttpOptions(openai_api_key=None, token_secret=None)
        self.server, self.port = create_server(store, options, generator=make_generator(), slots=slots)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{BRIDGE_PATH}"

    def stop(self) -> None:
        self.server.stop()


HEVC_FRAMES = 12


def _write_hevc(path: Path, *, width: int = 64, height: int = 96) -> Path:
    """A tiny HEVC video (as a phone records): a grey ramp, one level per frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"x265-params": "log-level=error"}
        for i in range(HEVC_FRAMES):
            rgb = np.full((height, width, 3), 20 + 15 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """avatar.mp4, an HEVC video, and TINY_MODELS short H.264 videos (for the LRU)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "avatar.mp4").symlink_to(SAMPLE_VIDEO)
    _write_hevc(folder / "phone.mp4")
    if shutil.which("ffmpeg"):
        for i in range(TINY_MODELS):
            subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size=64x96:rate=25:duration=0.4",
                            "-vf", f"hue=h={60 * i}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                            str(folder / f"tiny{i}.mp4")], check=True)
    return folder


@pytest.fixture(scope="module")
def agent_voice() -> np.ndarray:
    """What the fake agent says: 0.5 s of silence, the sample speech, 1 s of silence, at 48 kHz."""
    speech = np.frombuffer(_speech_pcm16(AGENT_RATE_HZ), "<i2").astype(np.float32) / 32768
    return np.concatenate([np.zeros(AGENT_RATE_HZ // 2, np.float32), speech, np.zeros(AGENT_RATE_HZ, np.float32)])


@pytest.fixture(scope="module")
def fake_agent(agent_voice):
    with FakeRealtimeWebRTC(agent_voice, barge_in_at_s=None) as fake:
        yield fake


@pytest.fixture(scope="module")
def served(models_dir, cache_dir, fake_agent):
    # the token endpoint's `openai` client reads OPENAI_BASE_URL when the app is made
    before = os.environ.get("OPENAI_BASE_URL")
    os.environ["OPENAI_BASE_URL"] = fake_agent.base_url
    try:
        server = _Server(ModelStore(cache_dir=cache_dir, models_dir=models_dir),
                         options=HttpOptions(openai_api_key=API_KEY, token_secret=None,
                                             realtime_calls_url=fake_agent.calls_url))
    finally:
        if before is None:
            os.environ.pop("OPENAI_BASE_URL")
        else:
            os.environ["OPENAI_BASE_URL"] = before
    yield server
    server.stop()


def _speech_pcm16(rate_hz: int) -> bytes:
    mono = resample(load_audio(SAMPLE_SPEECH).samples, from_rate_hz=SAMPLE_RATE_HZ, to_rate_hz=rate_hz)
    return (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes()


def _frames_until_close(ws) -> tuple[list[tuple[dict, bytes]], int, str]:
    frames = []
    try:
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                frames.append(decode_frame(message))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code, exc.rcvd.reason


# --- the bridge, from Python -------------------------------------------------------------------


def test_bridge_streams_the_engine_frames(served, store):
    """Each frame of a clip comes back once, in order, as the engine makes it, then 1000."""
    rate_hz = 16_000
    pcm = _speech_pcm16(rate_hz)
    with connect(served.ws_url) as ws:  # the client offers permessage-deflate; JPEG frames are not worth it
        assert "deflate" not in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        ws.send(json.dumps({"model": "avatar", "sample_rate_hz": rate_hz, "first_frame": 3}))
        ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "ready" and ready["n_frames"] == 200 and ready["fps"] == 25
        assert (ready["width"], ready["height"]) == (576, 768)
        step = 2 * 160  # 10 ms chunks
        for i in range(0, len(pcm), step):
            ws.send(pcm[i:i + step])
        ws.send(json.dumps({"type": "end"}))
        frames, code, reason = _frames_until_close(ws)
    assert code == 1000, reason
    mono = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    expected = list(render_clip(store.get(SAMPLE_VIDEO), mono, generator=make_generator(), first_frame=3,
                                phonetic=False))  # the bridge is live: the spectral driver
    assert [h["index"] for h, _ in frames] == list(range(len(expected)))
    assert [h["model_frame"] for h, _ in frames] == [f.model_frame for f in expected]
    assert [h["speech"] for h, _ in frames] == [f.speech for f in expected]
    assert any(h["speech"] for h, _ in frames) and not all(h["speech"] for h, _ in frames)
    np.testing.assert_allclose([h["bounds"] for h, _ in frames], [f.bounds for f in expected], atol=1e-3)
    assert all(jpeg[:2] == b"\xff\xd8" for _, jpeg in frames)
    # mouth_of_s: the centre of the frame's audio
    assert frames[10][0]["mouth_of_s"] == pytest.approx(10.5 / 25, abs=1e-4)


@pytest.mark.parametrize("first, then, code, says", [
    (b"\x00\x01", None, 1003, "start message"),
    ("not json", None, 1007, "not JSON"),
    (json.dumps({"model": "../etc", "sample_rate_hz": 16000}), None, 1007, "model"),
    (json.dumps({"model": "avatar", "sample_rate_hz": 100}), None, 1007, "sample_rate_hz"),
    (json.dumps({"model": "avatar", "sample_rate_hz": 16000, "sample_type": "u8"}), None, 1007, "sample_type"),
    (json.dumps({"model": "nobody", "sample_rate_hz": 16000}), None, 1007, "no model named 'nobody'"),
    (json.dumps({"model": "avatar", "sample_rate_hz": 16000}), b"\x00\x01\x02", 1007, "not whole s16"),
    (json.dumps({"model": "avatar", "sample_rate_hz": 16000, "sample_type": "f32"}),
     np.array([0, np.nan], "<f4").tobytes(), 1007, "NaN"),
    (json.dumps({"model": "avatar", "sample_rate_hz": 16000}), "hello", 1003, '{"type": "end"}'),
])
def test_bridge_closes_bad_input_with_a_reason(served, first, then, code, says):
    with connect(served.ws_url) as ws:
        ws.send(first)
        if then is not None:
            assert json.loads(ws.recv(timeout=60))["type"] == "ready"
            ws.send(then)
        _, got_code, reason = _frames_until_close(ws)
    assert got_code == code
    assert says.lower() in reason.lower()


def test_bridge_refuses_cross_origin_pages(served):
    with connect(served.ws_url, origin=f"http://evil.example:{served.port}") as ws:
        _, code, reason = _frames_until_close(ws)
    assert code == 1008 and "cross-origin" in reason
    # its own page's origin is welcome
    with connect(served.ws_url, origin=f"http://127.0.0.1:{served.port}") as ws:
        ws.send(json.dumps({"model": "avatar", "sample_rate_hz": 16000}))
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"


def test_bridge_streams_share_a_capacity(models_dir, cache_dir):
    server = _Server(ModelStore(cache_dir=cache_dir, models_dir=models_dir), slots=threading.BoundedSemaphore(1))
    try:
        start = json.dumps({"model": "avatar", "sample_rate_hz": 16000})
        with connect(server.ws_url) as first:
            first.send(start)
            assert json.loads(first.recv(timeout=60))["type"] == "ready"
            with connect(server.ws_url) as second:
                second.send(start)
                _, code, reason = _frames_until_close(second)
            assert code == 1013 and "capacity" in reason
        # the first stream's slot comes back once the server has seen it go
        for _ in range(100):
            with connect(server.ws_url) as third:
                third.send(start)
                try:
                    if json.loads(third.recv(timeout=60))["type"] == "ready":
                        break
                except ConnectionClosed as exc:
                    assert exc.rcvd.code == 1013
            time.sleep(0.05)
        else:
            pytest.fail("the slot of a closed stream never came back")
    finally:
        server.stop()


def test_a_live_stream_drops_its_backlog_and_keeps_its_clock(served):
    """A live page (max_backlog_ms) that sends faster than the engine renders loses its oldest waiting audio,
    not its place: indices stay contiguous and mouth_of_s jumps by what was dropped."""
    pcm = _speech_pcm16(16_000)
    with connect(served.ws_url) as ws:
        ws.send(json.dumps({"model": "avatar", "sample_rate_hz": 16_000, "max_backlog_ms": 40}))
        assert json.loads(ws.recv(timeout=60))["max_backlog_ms"] == 40
        for i in range(0, len(pcm), 320):  # all at once: the engine cannot keep up
            ws.send(pcm[i:i + 320])
        ws.send(json.dumps({"type": "end"}))
        frames, code, reason = _frames_until_close(ws)
    assert code == 1000, reason
    headers = [h for h, _ in frames]
    assert [h["index"] for h in headers] == list(range(len(headers)))
    dropped_s = headers[-1]["dropped_s"]
    assert dropped_s > 0.5, "nothing was dropped: the test sent too slowly to make a backlog"
    # the frames that were made cover the audio that was kept, on the sender's clock
    total_s = len(pcm) / 2 / 16_000
    assert len(headers) == pytest.approx((total_s - dropped_s) * 25, abs=2)
    # a frame later in the stream is later in the audio by at least a frame, by more across a drop,
    # and the last one shows the end of the audio sent
    steps = np.diff([h["mouth_of_s"] for h in headers])
    assert steps.min() >= 1 / 25 - 1e-6
    last = headers[-1]
    assert last["mouth_of_s"] == pytest.approx((len(headers) - 0.5) / 25 + dropped_s, abs=2 / 25)
    assert last["mouth_of_s"] > total_s - 0.1


def test_hevc_models_get_an_h264_copy_for_browsers(served, models_dir, cache_dir):
    base = f"http://127.0.0.1:{served.port}"
    with httpx.Client(base_url=base, timeout=120) as client:
        listed = {m["name"]: m for m in client.get("/api/models").json()}
        assert listed["avatar"]["browser_url"] == listed["avatar"]["url"] == "/api/model-video/avatar"
        assert listed["phone"]["browser_url"] == "/api/model-video/phone/browser.mp4"
        # the original is served unchanged
        assert client.get("/api/model-video/phone").content == (models_dir / "phone.mp4").read_bytes()
        copy = client.get("/api/model-video/phone/browser.mp4")
        assert copy.status_code == 200 and copy.headers["content-type"] == "video/mp4"
        made = sorted(cache_dir.glob("phone-*.browser.mp4"))
        assert len(made) == 1 and made[0].read_bytes() == copy.content
        ranged = client.get("/api/model-video/phone/browser.mp4", headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == copy.content[10:20]
        assert ranged.headers["content-range"] == f"bytes 10-19/{len(copy.content)}"
        # made once: a second request serves the same file
        mtime_ns = made[0].stat().st_mtime_ns
        assert client.get("/api/model-video/phone/browser.mp4").content == copy.content
        assert made[0].stat().st_mtime_ns == mtime_ns
        assert client.get("/api/model-video/nobody/browser.mp4").status_code == 404
        assert client.get("/api/model-video/..%2fx/browser.mp4").status_code in (400, 404)
    with av.open(str(made[0])) as copied, av.open(str(models_dir / "phone.mp4")) as original:
        assert copied.streams.video[0].codec_context.name == "h264"
        got = [f.to_ndarray(format="rgb24").astype(int) for f in copied.decode(video=0)]
        want = [f.to_ndarray(format="rgb24").astype(int) for f in original.decode(video=0)]
    assert len(got) == len(want) == HEVC_FRAMES
    # the same frames, through one more lossy encode and colour conversion (Mp4Writer's, as `render`
    # writes: dark tones come out about 3 levels darker)
    assert max(np.abs(g - w).mean() for g, w in zip(got, want)) <= 4.5
    assert max(np.abs(g - w).max() for g, w in zip(got, want)) <= 8


def test_a_dns_rebinding_socket_is_refused(served):
    """A page on another DNS name re-pointed at 127.0.0.1 is refused at the handshake, before any origin check."""
    sock = socket.create_connection(("127.0.0.1", served.port))
    with pytest.raises(InvalidStatus) as refused:
        with connect(f"ws://rebound.example:{served.port}{BRIDGE_PATH}", sock=sock):
            pass
    assert refused.value.response.status_code == 403


# --- the page, in Chromium ---------------------------------------------------------------------

SNAPSHOT_JS = """(model) => {
  // the last drawn frame against the plain model frame, read in one task (no draw in between)
  const e = app.frameLog.at(-1);
  if (!e || e.mouthOf === null || !e.fromModel) return null;
  const c = app.faceCompositor.canvas, W = c.width, H = c.height;
  const got = app.faceCompositor.ctx.getImageData(0, 0, W, H).data;
  const ref = new OffscreenCanvas(W, H).getContext("2d");
  ref.drawImage(app.modelVideoManager.getModelFrame(model, e.modelFrame), 0, 0);
  const want = ref.getImageData(0, 0, W, H).data;
  const k = W / app.session.facts.width;
  const [x0, y0, x1, y1] = e.bounds.map((v) => v * k);
  let outsideMax = 0, insideSum = 0, insideN = 0;
  for (let y = 0; y < H; y += 1) {
    for (let x = 0; x < W; x += 1) {
      const i = 4 * (y * W + x);
      const d = Math.max(Math.abs(got[i] - want[i]), Math.abs(got[i + 1] - want[i + 1]), Math.abs(got[i + 2] - want[i + 2]));
      if (x >= Math.floor(x0) - 1 && x <= Math.ceil(x1) && y >= Math.floor(y0) - 1 && y <= Math.ceil(y1)) {
        insideSum += d; insideN += 1;
      } else outsideMax = Math.max(outsideMax, d);
    }
  }
  return {index: e.index, speech: e.speech, open: e.open, outsideMax, insideMean: insideSum / insideN};
}"""


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    """What the fake microphone plays, on a loop: 1 s of silence, speech, 2 s of silence, at 48 kHz."""
    speech = np.frombuffer(_speech_pcm16(MIC_RATE_HZ), "<i2").astype(np.float32) / 32768
    silence_1s = np.zeros(MIC_RATE_HZ, np.float32)
    return write_wav(tmp_path_factory.mktemp("mic") / "mic.wav",
                     np.concatenate([silence_1s, speech, silence_1s, silence_1s]), MIC_RATE_HZ)


@pytest.fixture(scope="module")
def browser(mic_wav):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}", "--autoplay-policy=no-user-gesture-required",
            # host ICE candidates as IP addresses, not mDNS names, so that aiortc can reach them
            "--disable-features=WebRtcHideLocalIpsWithMdns", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, served):
    page = browser.new_page(viewport={"width": 900, "height": 1000})
    page.problems = []
    page.on("console", lambda m: m.type in ("error", "warning") and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.goto(f"http://127.0.0.1:{served.port}/")
    page.wait_for_function("window.app !== undefined && document.querySelector('#models option') !== null")
    yield page
    page.close()


def test_page_loads_and_prepares_a_model_with_progress(page):
    result = page.evaluate("""async () => {
      const steps = [];
      const info = await app.modelVideoManager.prepareModel("avatar", (p) => steps.push([p.phase, p.percent]));
      return {info, steps, ready: app.modelVideoManager.isModelReady("avatar"),
              stats: app.modelVideoManager.getMemoryStats(),
              frame: (() => { const f = app.modelVideoManager.getModelFrame("avatar", 7); return [f.width, f.height]; })()};
    }""")
    assert page.problems == []
    phases = [phase for phase, _ in result["steps"]]
    assert phases[0] == "download" and "frames" in phases and phases[-1] == "ready"
    assert phases.index("frames") > max(i for i, p in enumerate(phases) if p == "download")
    percents = [pc for _, pc in result["steps"]]
    assert percents == sorted(percents) and percents[-1] == 100 and len(set(percents)) > 10
    info, stats = result["info"], result["stats"]
    assert result["ready"] and (info["nFrames"], info["width"], info["height"]) == (200, 576, 768)
    assert result["frame"] == [info["displayWidth"], info["displayHeight"]]
    assert 0 < stats["usedBytes"] <= stats["budgetBytes"] / stats["maxModels"]


def test_microphone_mode_moves_the_mouth_in_sync(page, served):
    page.evaluate("app.modelVideoManager.prepareModel('avatar')")  # the mouth-only fallback is not compared
    page.evaluate("app.start({mode: 'mic', model: 'avatar'})")
    # the WAV's 1 s of silence, its speech, and silence again
    snapshots = _watch(page, "avatar", MIC_WATCH_S, screenshot="/tmp/h15_mic_speaking.png")
    log = page.evaluate("app.frameLog.filter((e) => e.session === app.session.id && e.mouthOf !== null)")
    page.evaluate("app.stop()")
    page.screenshot(path="/tmp/h15_after_stop.png")
    assert page.problems == []
    # outside the mouth region the canvas is the model frame, exactly
    assert snapshots and max(s["outsideMax"] for s in snapshots) == 0
    speaking = [s["insideMean"] for s in snapshots if s["speech"] and s["open"] > 0.2]
    resting = [s["insideMean"] for s in snapshots if not s["speech"]]
    assert speaking and resting, f"no speech or no silence seen: {snapshots}"
    assert np.median(speaking) > np.median(resting) + 1, (speaking, resting)
    # every frame is drawn once its audio is in, in order
    lag_s = np.array([e["playing"] - e["mouthOf"] for e in log])
    assert len(log) > 100 and (lag_s > 0).all()
    indices = [e["index"] for e in log]
    assert indices == sorted(indices)
    p95_ms = 1000 * np.percentile(lag_s, 95)
    # a starved engine makes the server skip audio (the page asks it to), never lag further and further
    skipped_s = log[-1]["droppedS"]
    # the goal (p95 <= MIC_P95_GOAL_MS) is a speed figure, which depends on the machine's load: it is
    # reported (docs/benchmarks.md), not asserted. Here: the mouth keeps up with the microphone (a page
    # that falls further and further behind lags by seconds). `pytest -s` shows the figure.
    print(f"web page microphone -> mouth: p50 {1000 * np.median(lag_s):.0f} ms, p95 {p95_ms:.0f} ms "
          f"(goal {MIC_P95_GOAL_MS}), the server skipped {skipped_s:.1f} s of audio")
    assert p95_ms <= MIC_P95_SANITY_MS, f"p95 {p95_ms:.0f} ms (the server skipped {skipped_s:.1f} s of audio)"


def test_a_cross_origin_socket_is_refused(page, served):
    """The page is at 127.0.0.1; a socket to localhost is another origin (as any other site's would be)."""
    closed = page.evaluate("""(url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      ws.onclose = (e) => resolve({code: e.code, reason: e.reason});
    })""", f"ws://localhost:{served.port}{BRIDGE_PATH}")
    assert closed["code"] == 1008 and "cross-origin" in closed["reason"]


def test_the_page_prepares_an_hevc_model_from_its_h264_copy(page):
    info = page.evaluate("app.modelVideoManager.prepareModel('phone')")
    assert (info["nFrames"], info["width"], info["height"]) == (HEVC_FRAMES, 64, 96)
    assert page.problems == []


def test_the_page_keeps_five_models_and_evicts_the_least_recently_used(page):
    names = page.evaluate("""async () => {
      for (let i = 0; i < 6; i += 1) await app.modelVideoManager.prepareModel(`tiny${i}`);
      return app.modelVideoManager.getMemoryStats().models.map((m) => m.name);
    }""")
    assert names == [f"tiny{i}" for i in range(1, 6)]
    assert page.evaluate("app.modelVideoManager.isModelReady('tiny0') || app.modelVideoManager.isModelReady('avatar')") is False
    assert page.problems == []


AGENT_WATCH_S = 8.0
# after a barge-in, the voice still in flight (the WebRTC jitter buffer: more on a loaded machine) ends
# within this, and the mouth rests
REST_WITHIN_S = 0.4
SPEECH_HANGOVER_S = 0.3  # the driver calls a frame speech this long after the voice ends  # the fake agent's 0.5 s of silence, its 5.9 s of speech, and silence


def _watch(page, model: str, seconds: float, screenshot: str | None = None) -> list[dict]:
    """Snapshots of the canvas against the plain model frame, every 0.2 s for `seconds`."""
    snapshots = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        snap = page.evaluate(SNAPSHOT_JS, model)
        if snap and (not snapshots or snap["index"] != snapshots[-1]["index"]):
            snapshots.append(snap)
            if screenshot and snap["speech"] and snap["open"] > 0.3:
                page.screenshot(path=screenshot)
                screenshot = None
        time.sleep(0.2)
    return snapshots


def test_agent_mode_speaks_the_agents_voice_in_sync(page, served, fake_agent):
    """The agent's voice comes over WebRTC from the fake Realtime peer; each mouth frame is drawn while its
    audio is heard (within one frame), the caption follows, and the server's API key never reaches the page."""
    calls_before = len(fake_agent.call_keys)
    page.evaluate("app.modelVideoManager.prepareModel('avatar')")  # the mouth-only fallback is not compared
    page.evaluate("app.start({mode: 'agent', model: 'avatar'})")
    snapshots = _watch(page, "avatar", AGENT_WATCH_S, screenshot="/tmp/h15_agent_speaking.png")
    state = page.evaluate("""() => ({
      log: app.frameLog.filter((e) => e.session === app.session.id && e.mouthOf !== null),
      caption: document.getElementById('captions').textContent, fps: app.session.facts.fps,
      readout: document.getElementById('readout').textContent})""")
    page.evaluate("app.stop()")
    assert page.problems == []
    # the page called the Realtime endpoint with the ephemeral key; only the server used the API key
    assert fake_agent.call_keys[calls_before:] == [f"Bearer {EPHEMERAL_KEY}"]
    assert fake_agent.api_keys[-1] == f"Bearer {API_KEY}"
    assert "a=sendrecv" in fake_agent.offers[-1] or "a=sendonly" in fake_agent.offers[-1]
    seen_by_page = page.evaluate("""async () => [document.documentElement.outerHTML,
      await (await fetch('/api/config')).text(), await (await fetch('/token', {method: 'POST'})).text()]""")
    assert all(API_KEY not in text for text in seen_by_page) and EPHEMERAL_KEY in seen_by_page[2]
    assert state["caption"] == "Hello there, I am the agent."
    # the mouth moves with the agent's speech and rests in its silence; outside it, the model frame
    assert snapshots and max(s["outsideMax"] for s in snapshots) == 0
    speaking = [s["insideMean"] for s in snapshots if s["speech"] and s["open"] > 0.2]
    resting = [s["insideMean"] for s in snapshots if not s["speech"]]
    assert speaking and resting and np.median(speaking) > np.median(resting) + 1, (speaking, resting)
    log = state["log"]
    # frames that come too late for their audio are not drawn: a loaded machine draws fewer, never late ones
    assert len(log) > 50 and any(e["speech"] for e in log)
    off_s = np.abs([e["playing"] - e["mouthOf"] for e in log])
    assert np.mean(off_s <= 1 / state["fps"]) >= 0.95, f"{np.mean(off_s <= 1 / state['fps']):.0%} within a frame"


def test_agent_voice_delay_grows_with_late_frames_and_comes_back_in_silence(page, served, fake_agent):
    """The voice's delay is a jitter buffer: late frames grow it (forced here: three late frames within
    a second, four times over); once the answer is over and the frames come with room to spare, it
    comes back a step at a time, never under 100 ms, and only while the whole delay line is silent."""
    page.evaluate("app.start({mode: 'agent', model: 'avatar'})")
    page.wait_for_function("app.session && app.session.loudAtS > 0", timeout=20_000)  # the voice is playing
    page.evaluate("() => { for (let i = 0; i < 4; i += 1) app.late(app.session, 3); }")
    grown = page.evaluate("app.session.delayS")
    page.wait_for_function("app.session.delayChanges.some((c) => c.to < c.from)", timeout=30_000)
    time.sleep(2)
    state = page.evaluate("() => ({changes: app.session.delayChanges, delay: app.session.delayS})")
    page.evaluate("app.stop()")
    assert page.problems == []
    assert grown >= 0.26 - 1e-6
    shrinks = [c for c in state["changes"] if c["to"] < c["from"]]
    # judged on the steps back, not on the delay at the end: a busy machine may make real frames late
    # after them, and growing again then is the jitter buffer doing its job
    assert shrinks and all(c["to"] >= 0.1 - 1e-6 for c in shrinks)
    assert all(round(c["from"] - c["to"], 6) == 0.04 for c in shrinks)
    # each step back came when the voice had been quiet for longer than the delay it shortened
    assert all(c["at"] - c["loudAt"] > c["from"] for c in shrinks), shrinks


def test_agent_barge_in_silences_the_voice_and_rests_the_mouth(page, served, fake_agent):
    """Speech over the agent (input_audio_buffer.speech_started) mutes its voice at once and no mouth frame of
    the cancelled answer is drawn after it: the model's own frames (a resting mouth) until the next answer."""
    fake_agent.barge_in_at_s = 2.5  # mid-sentence
    try:
        page.evaluate("app.start({mode: 'agent', model: 'avatar'})")
        page.wait_for_function("app.session && app.session.bargeIns === 1", timeout=20_000)
        time.sleep(1.5)
        state = page.evaluate("""() => ({gain: app.session.speaker.gain.value,
                                          log: app.frameLog.filter((e) => e.session === app.session.id)})""")
        page.screenshot(path="/tmp/h15_agent_barge_in.png")
        page.evaluate("app.stop()")
    finally:
        fake_agent.barge_in_at_s = None
    assert page.problems == []
    assert state["gain"] == 0
    before = [e for e in state["log"] if e["bargeIns"] == 0 and e["mouthOf"] is not None]
    after = [e for e in state["log"] if e["bargeIns"] == 1]
    assert before and any(e["speech"] for e in before)
    assert len(after) > 10 and all(e["mouthOf"] is None and e["bounds"] is None for e in after)
