"""The WebSocket bridge of `lipsync serve`: a page streams audio in, each mouth frame comes back.

One socket is one `core.engine.LiveEngine` stream (no gRPC in between: the web layer wraps the
engine directly, as the gRPC servicer does). The protocol, at `BRIDGE_PATH`:

1. page -> server, text: `{"model": NAME, "sample_rate_hz": RATE, "sample_type": "s16"|"f32",
   "first_frame": N, "max_backlog_ms": MS}` (sample_type defaults to "s16", first_frame to 0,
   max_backlog_ms to 0). A live page sets max_backlog_ms: when the engine falls behind (a starved
   CPU) and more than that much audio waits, the oldest waiting audio is dropped, so the mouth
   catches up with the voice instead of lagging more and more; 0: nothing is dropped (a clip
   sender then waits on TCP).
2. server -> page, text: `{"type": "ready", "model", "fps", "fps_num", "fps_den", "n_frames",
   "width", "height", "region_px", "sample_rate_hz"}`: the facts the page needs to draw.
3. page -> server, binary: mono little-endian PCM (PCM16 or float32, as announced) at RATE, in
   chunks of any size up to MAX_CHUNK_BYTES.
   page -> server, text `{"type": "end"}`: the audio is over; the rest of the frames come, then the
   server closes with 1000.
4. server -> page, binary, one message per output frame:
   `[uint32 big-endian N][N bytes of UTF-8 JSON header][JPEG]` with the header
   `{"index", "model_frame", "bounds": [xmin, ymin, xmax, ymax] (full-frame px), "speech", "open",
   "mouth_of_s", "dropped_s"}`. `mouth_of_s` is the second of the audio the page sent whose mouth
   the frame shows (its frame's centre, on the one clock of `core.timing`, plus the audio dropped
   before it); `dropped_s` is all the audio dropped so far. Indices stay contiguous across a drop.
   The JPEG is the 320x320 mouth region; it is empty when the frame's image is unusable (the page
   then shows the plain model frame).

Close codes: 1008 a cross-origin page (only pages served by this server may connect; clients that
send no Origin, which are not browsers, may), 1003 a message of the wrong kind, 1007 a bad start
message, an unknown model or bad audio, 1013 all stream slots in use, 1011 a server fault. Every
close carries a one-line reason.

The engine is CPU-bound, so `push` runs in a worker thread and the event loop keeps serving other
sockets and HTTP. Queues are bounded: a page that sends faster than the engine renders waits on its
own TCP window (or, live, loses its oldest audio), and a page that reads slowly holds up only its own
stream. Audio that waited is pushed in one piece, so a stream that fell behind pays one hop, not many.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol
from urllib.parse import urlsplit

import anyio
import numpy as np
from fastapi import FastAPI
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from lipsync_cli.core.engine import LiveEngine, MouthFrame, mouth_jpeg
from lipsync_cli.core.generator import MouthGenerator
from lipsync_cli.core.timing import frame_centre_sample
from lipsync_cli.errors import AudioError, LipsyncError, ModelNotFoundError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, check_samples, pcm_to_float
from lipsync_cli.media.models import is_valid_name
from lipsync_cli.media.store import Model, ModelStore

LOG = logging.getLogger(__name__)

BRIDGE_PATH = "/ws/lipsync"
MIN_RATE_HZ = 8_000  # the same range the gRPC service accepts
MAX_RATE_HZ = 192_000
SAMPLE_TYPES = ("s16", "f32")
# one chunk: 0.68 s of float32 at 192 kHz; a page sends 10-20 ms at a time
MAX_CHUNK_BYTES = 512 * 1024
MAX_START_BYTES = 4096  # the start message is a few fields
MAX_BACKLOG_LIMIT_MS = 10_000  # a larger max_backlog_ms would make dropping pointless
# drops further back than this behind the newest audio place no frame still to come (the driver
# decides a frame well within a second of its audio), so they are forgotten
DROP_MEMORY_S = 2.0
# chunks received but not yet pushed: about 0.6 s of 10 ms chunks. Beyond it the receiver stops
# reading, so a too-fast sender waits on TCP instead of growing server memory
IN_QUEUE_CHUNKS = 64
HEADER_LEN = struct.Struct(">I")  # the length prefix of a frame message's JSON header
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # a message of the wrong kind (binary before the start, text audio)
CLOSE_INVALID = 1007  # a message of the right kind with bad content
CLOSE_POLICY = 1008  # cross-origin
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013  # every stream slot is in use


class StreamSlots(Protocol):
    """The stream capacity shared with gRPC: `rpc.capacity.Capacity` (try_acquire) or a
    threading.BoundedSemaphore (acquire(blocking=False)); either way never blocks."""

    def release(self) -> None: ...


def _taker(slots: StreamSlots) -> Callable[[], bool]:
    """The non-blocking "take a slot" of either kind of capacity object."""
    try_acquire = getattr(slots, "try_acquire", None)
    return try_acquire if try_acquire is not None else (lambda: slots.acquire(blocking=False))


class _Refused(Exception):
    """Close the socket with `code` and `reason`; never leaves this module."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class StreamStart:
    """The first message of a socket, checked."""

    model: str  # a served model's name
    sample_rate_hz: int  # rate of the audio the page sends
    sample_type: str  # "s16" or "f32", little-endian, mono
    first_frame: int  # where in the model video's ping-pong loop the stream starts
    max_backlog_ms: int  # waiting audio beyond this is dropped, oldest first; 0: never drop


def parse_start(text: str) -> StreamStart:
    """The start message -> StreamStart; raises _Refused(1007) saying what is wrong."""
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise _Refused(CLOSE_INVALID, f"the start message is not JSON ({exc.msg})") from exc
    if not isinstance(msg, dict):
        raise _Refused(CLOSE_INVALID, "the start message must be a JSON object")
    model, rate = msg.get("model"), msg.get("sample_rate_hz")
    sample_type, first_frame = msg.get("sample_type", "s16"), msg.get("first_frame", 0)
    max_backlog_ms = msg.get("max_backlog_ms", 0)
    if not isinstance(model, str) or not is_valid_name(model):
        raise _Refused(CLOSE_INVALID, "'model' must be a model name (GET /api/models lists them)")
    if type(rate) is not int or not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise _Refused(CLOSE_INVALID, f"'sample_rate_hz' must be an integer {MIN_RATE_HZ} to {MAX_RATE_HZ}")
    if sample_type not in SAMPLE_TYPES:
        raise _Refused(CLOSE_INVALID, "'sample_type' must be 's16' or 'f32'")
    if type(first_frame) is not int or first_frame < 0:
        raise _Refused(CLOSE_INVALID, "'first_frame' must be a whole number >= 0")
    if type(max_backlog_ms) is not int or not 0 <= max_backlog_ms <= MAX_BACKLOG_LIMIT_MS:
        raise _Refused(CLOSE_INVALID, f"'max_backlog_ms' must be a whole number 0 to {MAX_BACKLOG_LIMIT_MS}")
    return StreamStart(model, rate, sample_type, first_frame, max_backlog_ms)


def is_same_origin(origin: str | None, host: str | None) -> bool:
    """True when a browser's Origin names the Host it connects to, or when there is no Origin
    (not a browser, so no page can be driving it). "null" origins (sandboxed frames, files) are refused."""
    if origin is None:
        return True
    if not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def encode_frame(frame: MouthFrame, *, fps, dropped_before_s: float = 0.0, dropped_s: float = 0.0) -> bytes:
    """One frame message: length-prefixed JSON header, then the mouth JPEG (empty when unusable).

    dropped_before_s: audio dropped before this frame's audio (shifts mouth_of_s onto the page's clock);
    dropped_s: all audio dropped so far.
    """
    jpeg = mouth_jpeg(frame)
    header = json.dumps({
        "index": frame.index, "model_frame": frame.model_frame,
        "bounds": [round(float(v), 3) for v in frame.bounds], "speech": bool(frame.speech),
        "open": round(float(frame.params.open), 4),
        "mouth_of_s": round(_mouth_of_engine_s(frame.index, fps) + dropped_before_s, 6),
        "dropped_s": round(dropped_s, 6),
    }, separators=(",", ":")).encode()
    return HEADER_LEN.pack(len(header)) + header + jpeg


def _mouth_of_engine_s(index: int, fps) -> float:
    """The second of the audio the engine was given whose mouth frame `index` shows."""
    return frame_centre_sample(index, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ


def decode_frame(message: bytes) -> tuple[dict, bytes]:
    """A frame message -> (header, JPEG bytes): what the page does, for tests and Python clients."""
    (n,) = HEADER_LEN.unpack_from(message)
    return json.loads(message[HEADER_LEN.size:HEADER_LEN.size + n]), message[HEADER_LEN.size + n:]


def _ready(model: Model, name: str, start: StreamStart) -> dict:
    return {"type": "ready", "model": name, "fps": float(model.fps), "fps_num": model.fps.numerator,
            "fps_den": model.fps.denominator, "n_frames": model.n_frames, "width": model.width,
            "height": model.height, "region_px": model.region_px, "sample_rate_hz": start.sample_rate_hz,
            "max_backlog_ms": start.max_backlog_ms}


def _short(reason: str) -> str:
    data = reason.encode()
    return reason if len(data) <= MAX_REASON_BYTES else data[:MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


class _Stream:
    """One socket's engine stream: chunks in through a bounded queue, frames out on the socket.

    The queue holds at most IN_QUEUE_CHUNKS chunks; a live stream (max_backlog_ms > 0) also at
    most that much audio, dropping the oldest beyond it and noting where, so each frame's
    `mouth_of_s` stays on the page's clock.
    """

    def __init__(self, ws: WebSocket, engine: LiveEngine, model: Model, start: StreamStart):
        self.ws, self.engine, self.model, self.start = ws, engine, model, start
        self.chunks: deque[np.ndarray | None] = deque()  # None: the end of the audio
        self.waiting_samples = 0  # in self.chunks
        self.changed = asyncio.Event()  # set when a chunk is queued or taken
        self.max_backlog_samples = start.max_backlog_ms * start.sample_rate_hz // 1000
        self.pushed_samples = 0  # given to the engine so far
        self.dropped_samples = 0
        # (engine seconds where a drop happened, all audio dropped by then in seconds), in order
        self.drops: list[tuple[float, float]] = [(0.0, 0.0)]

    def _dropped_before_s(self, index: int) -> float:
        at = bisect_right(self.drops, (_mouth_of_engine_s(index, self.model.fps), float("inf"))) - 1
        return self.drops[at][1]

    def _render(self, samples: np.ndarray | None) -> list[bytes]:
        """Worker thread: push (or flush, for None) and encode the frames completed."""
        frames = self.engine.flush() if samples is None else self.engine.push(samples)
        dropped_s = self.dropped_samples / self.start.sample_rate_hz
        return [encode_frame(f, fps=self.model.fps, dropped_before_s=self._dropped_before_s(f.index),
                             dropped_s=dropped_s) for f in frames]

    def _drop_backlog(self) -> None:
        """Live streams: keep at most max_backlog_samples waiting, dropping whole chunks, oldest first."""
        dropped = 0
        while self.waiting_samples > self.max_backlog_samples and self.chunks and self.chunks[0] is not None:
            n = len(self.chunks.popleft())
            self.waiting_samples -= n
            dropped += n
        if dropped:
            self.dropped_samples += dropped
            self.drops.append((self.pushed_samples / self.start.sample_rate_hz,
                               self.dropped_samples / self.start.sample_rate_hz))

    async def _put(self, item: np.ndarray | None) -> None:
        if self.max_backlog_samples == 0:
            while len(self.chunks) >= IN_QUEUE_CHUNKS:  # stop reading: the sender waits on TCP
                self.changed.clear()
                await self.changed.wait()
        self.chunks.append(item)
        if item is not None:
            self.waiting_samples += len(item)
            if self.max_backlog_samples:
                self._drop_backlog()
        self.changed.set()

    async def receive(self) -> None:
        """Socket -> queue until the page says end (None queued) or goes away (WebSocketDisconnect)."""
        width = 2 if self.start.sample_type == "s16" else 4
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", CLOSE_NORMAL))
            data, text = msg.get("bytes"), msg.get("text")
            if text is not None:
                if text.strip().replace(" ", "") != '{"type":"end"}':
                    raise _Refused(CLOSE_UNSUPPORTED, 'after the start, text messages may only be {"type": "end"}')
                await self._put(None)
                return
            if len(data) > MAX_CHUNK_BYTES:
                raise _Refused(CLOSE_INVALID, f"an audio chunk of {len(data)} bytes is over {MAX_CHUNK_BYTES}")
            if len(data) % width:
                raise _Refused(CLOSE_INVALID, f"{len(data)} bytes is not whole {self.start.sample_type} samples")
            samples = pcm_to_float(data, sample_type=self.start.sample_type, channels=1)[:, 0]
            try:
                check_samples(samples, what="the audio")
            except AudioError as exc:
                raise _Refused(CLOSE_INVALID, str(exc)) from exc
            await self._put(samples)

    def _take(self) -> np.ndarray | None:
        """Everything waiting up to the end marker, as one array; None when the end is next."""
        parts = []
        while self.chunks and self.chunks[0] is not None:
            parts.append(self.chunks.popleft())
        self.waiting_samples -= sum(len(p) for p in parts)
        if not parts:
            self.chunks.popleft()
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def render(self) -> None:
        """Queue -> engine (worker thread) -> socket, until the end of the audio has been flushed."""
        while True:
            while not self.chunks:
                self.changed.clear()
                await self.changed.wait()
            samples = self._take()
            self.changed.set()
            if samples is not None:
                self.pushed_samples += len(samples)
            for message in await anyio.to_thread.run_sync(self._render, samples):
                await self.ws.send_bytes(message)
            if samples is None:
                return
            # drops behind the engine's newest frame no longer place any frame: only the last counts
            newest_s = self.pushed_samples / self.start.sample_rate_hz
            keep = max(0, bisect_right(self.drops, (newest_s - DROP_MEMORY_S, float("inf"))) - 1)
            del self.drops[:keep]


async def _open(store: ModelStore, generator: MouthGenerator, start: StreamStart) -> tuple[Model, LiveEngine]:
    def load() -> tuple[Model, LiveEngine]:
        model = store.get(start.model, names_only=True)  # may prepare it: seconds, so off the loop
        return model, LiveEngine(model, generator, sample_rate_hz=start.sample_rate_hz, first_frame=start.first_frame)

    try:
        return await anyio.to_thread.run_sync(load)
    except ModelNotFoundError as exc:
        # not the store's message: it lists the server's folders
        raise _Refused(CLOSE_INVALID, f"no model named {start.model!r} (GET /api/models lists them)") from exc


async def _serve_socket(ws: WebSocket, store: ModelStore, generator: MouthGenerator,
                        slots: StreamSlots | None) -> None:
    await ws.accept()
    held = False
    try:
        if not is_same_origin(ws.headers.get("origin"), ws.headers.get("host")):
            LOG.warning("refused a cross-origin WebSocket from %s", ascii(ws.headers.get("origin", "")[:200]))
            raise _Refused(CLOSE_POLICY, "cross-origin WebSockets are refused: use the page this server serves")
        first = await ws.receive()
        if first["type"] == "websocket.disconnect":
            return
        if first.get("text") is None:
            raise _Refused(CLOSE_UNSUPPORTED, "the first message must be the JSON start message, as text")
        if len(first["text"]) > MAX_START_BYTES:
            raise _Refused(CLOSE_INVALID, f"the start message is over {MAX_START_BYTES} bytes")
        start = parse_start(first["text"])
        if slots is not None:
            held = _taker(slots)()
            if not held:
                raise _Refused(CLOSE_TRY_LATER, "the server is at its stream capacity: try again later")
        model, engine = await _open(store, generator, start)
        await ws.send_text(json.dumps(_ready(model, start.model, start)))
        stream = _Stream(ws, engine, model, start)
        receiver = asyncio.ensure_future(stream.receive())
        renderer = asyncio.ensure_future(stream.render())
        try:
            # the renderer ends after the flush; the receiver only ends early by raising
            done, _ = await asyncio.wait({receiver, renderer}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
            await renderer
        finally:
            for task in (receiver, renderer):
                task.cancel()
        await ws.close(CLOSE_NORMAL, "end of the audio")
    except WebSocketDisconnect:
        LOG.debug("a page left its lip-sync stream")
    except _Refused as exc:
        await _close(ws, exc.code, exc.reason)
    except LipsyncError as exc:
        LOG.error("a lip-sync stream failed: %s", exc)
        await _close(ws, CLOSE_INTERNAL, f"the stream failed: {exc}")
    except Exception as exc:  # one bad stream never takes the server down
        LOG.exception("a lip-sync stream failed unexpectedly")
        await _close(ws, CLOSE_INTERNAL, f"the stream failed unexpectedly: {type(exc).__name__}")
    finally:
        if held:
            slots.release()


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code, _short(reason))
    except (RuntimeError, WebSocketDisconnect):
        pass  # the page has gone already


def add_bridge(app: FastAPI, store: ModelStore, generator: MouthGenerator, *,
               slots: StreamSlots | None = None) -> None:
    """Register the bridge at BRIDGE_PATH on `app`.

    slots: the stream capacity shared with the gRPC service (one slot per open stream); None: no limit.
    The route goes first, ahead of the page's static mount at "/", which would otherwise claim it.
    """
    async def endpoint(ws: WebSocket) -> None:
        await _serve_socket(ws, store, generator, slots)

    app.router.routes.insert(0, WebSocketRoute(BRIDGE_PATH, endpoint, name="lipsync_bridge"))
