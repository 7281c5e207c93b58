"""A stand-in for the OpenAI Realtime API's WebRTC side on 127.0.0.1, for the browser tests and bench.

It serves what a page and `lipsync serve` use:
- `POST /v1/realtime/client_secrets` (the server's token endpoint, through the `openai` SDK with
  OPENAI_BASE_URL pointed here): a fake ephemeral key; the API key presented is recorded.
- `POST /v1/realtime/calls` (the page, with the ephemeral key, CORS as OpenAI allows it): takes the
  SDP offer and answers with aiortc's. The answer's audio track plays `voice` (mono float32 at
  48 kHz) in real time, once, then silence; the `oai-events` data channel gets a script of events
  timed from the first audio sent: `response.created`, caption deltas, optionally a barge-in
  (`input_audio_buffer.speech_started`, after which the voice stops, as the real server cancels).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import socket
import sys
import threading
import time

import numpy as np
import uvicorn
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

RATE_HZ = 48_000
PACKET_S = 0.02  # WebRTC audio travels in 20 ms packets
PACKET_SAMPLES = int(RATE_HZ * PACKET_S)
EPHEMERAL_KEY = "ek_fake_realtime_client_secret"
CAPTION = ["Hello", " there,", " I am", " the agent."]


class VoiceTrack(MediaStreamTrack):
    """The agent's voice: `voice` in real time from the first packet asked for, then silence."""

    kind = "audio"

    def __init__(self, voice: np.ndarray):
        super().__init__()
        self.pcm = (np.clip(voice, -1, 1) * 32767).astype(np.int16)
        self.sent = 0
        self.started_at: float | None = None  # time.monotonic() of the first packet
        self.started = asyncio.Event()
        self.silenced = False  # after a barge-in

    async def recv(self) -> AudioFrame:
        if self.started_at is None:
            self.started_at = time.monotonic()
            self.started.set()
        due = self.started_at + self.sent / RATE_HZ
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        block = self.pcm[self.sent:self.sent + PACKET_SAMPLES]
        if self.silenced or len(block) < PACKET_SAMPLES:
            block = np.zeros(PACKET_SAMPLES, np.int16)
        frame = AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        self.sent += PACKET_SAMPLES
        return frame


class FakeRealtimeWebRTC:
    """`with FakeRealtimeWebRTC(voice, barge_in_at_s=None) as fake:`; `fake.base_url` is OpenAI's `/v1`.

    voice: (n,) float32 mono at 48 kHz. barge_in_at_s: seconds after the voice starts when the user
    "speaks over" the agent (None: never). Records `api_keys` (Authorization of token requests),
    `call_keys` (of SDP posts), `offers` (SDP text), `tracks` (one VoiceTrack per call).
    """

    def __init__(self, voice: np.ndarray, *, barge_in_at_s: float | None = None):
        self.voice, self.barge_in_at_s = voice, barge_in_at_s
        self.api_keys: list[str] = []
        self.call_keys: list[str] = []
        self.offers: list[str] = []
        self.tracks: list[VoiceTrack] = []
        self.sent_events: list[tuple[float, dict]] = []  # (time.monotonic(), event)
        self._pcs: list[RTCPeerConnection] = []
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        app = Starlette(routes=[
            Route("/v1/realtime/client_secrets", self._client_secret, methods=["POST"]),
            Route("/v1/realtime/calls", self._call, methods=["POST"]),
        ], middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["POST"],
                                  allow_headers=["Authorization", "Content-Type"])])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls_url(self) -> str:
        return f"{self.base_url}/realtime/calls"

    def __enter__(self) -> FakeRealtimeWebRTC:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._close_all(), self._loop)
            future.result(10)
        self._server.should_exit = True
        self._thread.join(10)

    async def _close_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        for pc in self._pcs:
            await pc.close()

    async def _client_secret(self, request: Request) -> Response:
        self.api_keys.append(request.headers.get("authorization", ""))
        return JSONResponse({"value": EPHEMERAL_KEY, "expires_at": int(time.time()) + 600,
                             "session": {"type": "realtime", "model": "gpt-realtime"}})

    async def _call(self, request: Request) -> Response:
        self._loop = asyncio.get_running_loop()
        self.call_keys.append(request.headers.get("authorization", ""))
        offer = (await request.body()).decode()
        self.offers.append(offer)
        pc = RTCPeerConnection()
        self._pcs.append(pc)
        track = VoiceTrack(self.voice)
        self.tracks.append(track)
        channel_ready: asyncio.Future = self._loop.create_future()

        @pc.on("datachannel")
        def on_channel(channel) -> None:
            if channel.label == "oai-events" and not channel_ready.done():
                channel_ready.set_result(channel)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createAnswer())
        task = asyncio.ensure_future(self._script(channel_ready, track))
        self._tasks.add(task)
        return Response(pc.localDescription.sdp, status_code=201, media_type="application/sdp")

    async def _script(self, channel_ready: asyncio.Future, track: VoiceTrack) -> None:
        channel = await channel_ready
        while channel.readyState != "open":
            await asyncio.sleep(0.01)
        self._send(channel, {"type": "session.created", "session": {"type": "realtime"}})
        await track.started.wait()
        script = [(0.0, {"type": "response.created"})]
        script += [(0.3 + 0.3 * i, {"type": "response.output_audio_transcript.delta", "delta": d})
                   for i, d in enumerate(CAPTION)]
        if self.barge_in_at_s is not None:
            script.append((self.barge_in_at_s, {"type": "input_audio_buffer.speech_started"}))
        for at_s, event in sorted(script, key=lambda e: e[0]):
            await asyncio.sleep(max(0.0, track.started_at + at_s - time.monotonic()))
            if event["type"] == "input_audio_buffer.speech_started":
                track.silenced = True
            self._send(channel, event)

    def _send(self, channel, event: dict) -> None:
        self.sent_events.append((time.monotonic(), event))
        channel.send(json.dumps(event))


def main() -> None:
    """`python tests/fake_realtime_webrtc.py VOICE.npy`: the fake in a process of its own (the bench: in
    production OpenAI's side runs elsewhere, not in the server's interpreter). Prints one JSON line
    with base_url and calls_url, then serves until standard input closes."""
    with FakeRealtimeWebRTC(np.load(sys.argv[1])) as fake:
        print(json.dumps({"base_url": fake.base_url, "calls_url": fake.calls_url}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
