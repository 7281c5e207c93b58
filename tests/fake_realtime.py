"""A stand-in for the OpenAI Realtime API on 127.0.0.1, written with `websockets`, for tests and benches.

It speaks enough of the protocol for the real `openai` SDK: `session.created`/`session.updated`,
a crude server VAD on the appended PCM16 (`input_audio_buffer.speech_started`/`speech_stopped`),
then one answer per user turn: the given 24 kHz audio in `response.output_audio.delta` events,
faster than real time, with its transcript. Speech during an answer cancels the rest of it, as the
real server's VAD does. It records every client event, and can misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import numpy as np
from websockets.exceptions import ConnectionClosed

RATE_HZ = 24_000
VAD_FRAME_MS = 20
VAD_RMS = 0.02  # a 20 ms frame louder than this is speech
SPEECH_START_MS = 60  # speech for this long starts a turn
SILENCE_END_MS = 400  # silence for this long ends it
DELTA_MS = 100  # answer audio per delta event
SEND_SPEED_X = 4.0  # answers stream this many times faster than real time


class FakeRealtime:
    """Run with `with FakeRealtime(answer) as fake:`; point the SDK at `fake.base_url`.

    answer: (n,) float32 at 24 kHz, spoken for every user turn. misbehave: per connection number
    (1-based), "error" sends an `error` event once the session is configured, "drop" aborts the socket
    right after the first answer is complete.
    """

    def __init__(self, answer: np.ndarray, *, answer_text: str = "Hello there.", user_text: str = "Hi.",
                 misbehave: dict[int, str] | None = None):
        self.answer_pcm = (np.clip(answer, -1, 1) * 32767).astype("<i2").tobytes()
        self.answer_text, self.user_text = answer_text, user_text
        self.misbehave = misbehave or {}
        self.events: list[tuple[int, float, dict]] = []  # (connection, time.monotonic(), client event)
        self.sent: list[tuple[int, float, str]] = []  # (connection, time, server event type)
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def of_type(self, kind: str) -> list[dict]:
        """The client events of one type, in order."""
        return [e for _, _, e in self.events if e.get("type") == kind]

    def __enter__(self) -> FakeRealtime:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        async with serve(self._connection, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _connection(self, ws) -> None:
        self.connections += 1
        number = self.connections
        turn = _Turn()

        async def send(event: dict) -> None:
            self.sent.append((number, time.monotonic(), event["type"]))
            await ws.send(json.dumps(event))

        await send({"type": "session.created", "event_id": "ev0", "session": {"type": "realtime"}})
        try:
            async for message in ws:
                event = json.loads(message)
                self.events.append((number, time.monotonic(), event))
                kind = event.get("type")
                if kind == "session.update":
                    await send({"type": "session.updated", "event_id": "ev1", "session": event["session"]})
                    if self.misbehave.get(number) == "error":
                        await send({"type": "error", "event_id": "ev2", "error": {
                            "type": "server_error", "code": "fake", "message": "the fake server fails on purpose"}})
                elif kind == "input_audio_buffer.append":
                    for change in turn.listen(base64.b64decode(event["audio"])):
                        if change == "started":
                            if turn.answering is not None:
                                turn.answering.cancel()
                            await send({"type": "input_audio_buffer.speech_started", "event_id": "ev3",
                                        "audio_start_ms": 0, "item_id": f"user{turn.count}"})
                        else:
                            await send({"type": "input_audio_buffer.speech_stopped", "event_id": "ev4",
                                        "audio_end_ms": 0, "item_id": f"user{turn.count}"})
                            await send({"type": "conversation.item.input_audio_transcription.completed",
                                        "event_id": "ev5", "item_id": f"user{turn.count}", "content_index": 0,
                                        "transcript": self.user_text})
                            turn.answering = asyncio.create_task(self._answer(ws, send, number, turn.count))
        except Exception:  # the client went away (or we aborted the socket): the connection is over
            pass

    async def _answer(self, ws, send, number: int, count: int) -> None:
        item, response = f"answer{number}_{count}", f"resp{number}_{count}"
        ids = {"response_id": response, "item_id": item, "output_index": 0, "content_index": 0}
        await send({"type": "response.created", "event_id": "ev6", "response": {"id": response, "object": "realtime.response", "status": "in_progress"}})
        step = RATE_HZ * DELTA_MS // 1000 * 2
        words = self.answer_text.split(" ")
        chunks = range(0, len(self.answer_pcm), step)
        try:
            for k, start in enumerate(chunks):
                await send({"type": "response.output_audio.delta", "event_id": f"ev7_{k}", **ids,
                            "delta": base64.b64encode(self.answer_pcm[start:start + step]).decode("ascii")})
                if k < len(words):
                    await send({"type": "response.output_audio_transcript.delta", "event_id": f"ev8_{k}", **ids,
                                "delta": words[k] + (" " if k < len(words) - 1 else "")})
                await asyncio.sleep(DELTA_MS / 1000 / SEND_SPEED_X)
            rest = " ".join(words[len(chunks):])
            if rest:
                await send({"type": "response.output_audio_transcript.delta", "event_id": "ev9", **ids,
                            "delta": " " + rest})
            await send({"type": "response.output_audio_transcript.done", "event_id": "ev10", **ids,
                        "transcript": self.answer_text})
            await send({"type": "response.done", "event_id": "ev11", "response": {
                "id": response, "object": "realtime.response", "status": "completed"}})
        except asyncio.CancelledError:
            await send({"type": "response.done", "event_id": "ev12", "response": {
                "id": response, "object": "realtime.response", "status": "cancelled"}})
            return
        except ConnectionClosed:  # the client left in the middle of the answer
            return
        if self.misbehave.get(number) == "drop":
            ws.transport.abort()


class _Turn:
    """The fake's voice activity detection over the appended audio."""

    def __init__(self):
        self.speaking = False
        self.run_ms = 0  # how long the current loud/quiet run has lasted
        self.count = 0
        self.answering: asyncio.Task | None = None
        self._pending = np.zeros(0, np.float32)

    def listen(self, pcm: bytes) -> list[str]:
        """"started"/"stopped" for each change the new audio brings."""
        frame = RATE_HZ * VAD_FRAME_MS // 1000
        self._pending = np.concatenate([self._pending, np.frombuffer(pcm, "<i2").astype(np.float32) / 32768])
        changes = []
        while len(self._pending) >= frame:
            loud = float(np.sqrt(np.mean(self._pending[:frame] ** 2))) > VAD_RMS
            self._pending = self._pending[frame:]
            self.run_ms = self.run_ms + VAD_FRAME_MS if loud != self.speaking else 0
            if not self.speaking and self.run_ms >= SPEECH_START_MS:
                self.speaking, self.run_ms = True, 0
                self.count += 1
                changes.append("started")
            elif self.speaking and self.run_ms >= SILENCE_END_MS:
                self.speaking, self.run_ms = False, 0
                changes.append("stopped")
        return changes
