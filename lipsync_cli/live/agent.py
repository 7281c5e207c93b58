"""The voice agent for `lipsync live --agent openai`: the user's voice to OpenAI Realtime, its spoken
answers back to the speakers and the avatar.

The conversation runs on the official SDK (`client.realtime.connect`), PCM16 mono at 24 kHz both
ways, with the server's voice activity detection taking turns. Answers arrive faster than real
time; `AnswerAudio` holds them until they play, so the session can hand them to the lip-sync
service a little ahead and show each mouth exactly when its sound plays.

Barge-in: when the server hears the user start talking (`input_audio_buffer.speech_started`) while
an answer plays, the rest of the answer is dropped at once and the server is told how much of it
was heard (`conversation.item.truncate`), so the conversation's history matches what the user heard.

Errors never end the session: a failed connection, an `error` event or a dropped socket is reported
through `on_message`, the avatar goes idle, and the agent connects again.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lipsync_cli.media.audio import float_to_pcm16, pcm_to_float
from lipsync_cli.live.audio_io import READ_TIMEOUT_S, AnswerSource, AudioSource, MessageFn, Ticker, chunk_samples
from lipsync_cli.defaults import DEFAULT_REALTIME_MODEL, DEFAULT_VOICE
from lipsync_cli.errors import AgentError

log = logging.getLogger(__name__)

REALTIME_RATE_HZ = 24_000  # the Realtime API's PCM16 rate, both ways
DEFAULT_INSTRUCTIONS = "You are a friendly assistant. Answer briefly, in a natural spoken style."
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"  # for the user's side of the transcript
RECONNECT_DELAY_S = 1.0  # first wait before connecting again; doubles up to MAX_RECONNECT_DELAY_S
MAX_RECONNECT_DELAY_S = 8.0
CONNECT_TIMEOUT_S = 10.0

# (role "user" or "assistant", new text, final: the turn's text is complete)
TranscriptFn = Callable[[str, str, bool], None]


@dataclass(frozen=True)
class AgentOptions:
    realtime_model: str = DEFAULT_REALTIME_MODEL  # the Realtime model that answers
    voice: str = DEFAULT_VOICE  # the assistant's voice
    instructions: str = DEFAULT_INSTRUCTIONS  # how the assistant behaves (its system prompt)
    base_url: str | None = None  # an OpenAI-compatible API, http(s)://HOST/v1; None: $OPENAI_BASE_URL, else OpenAI's


def check_agent(options: AgentOptions) -> None:
    """AgentError (one line) when the agent cannot be used at all: no API key, or no SDK."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise AgentError("OPENAI_API_KEY is not set: export your OpenAI API key to talk with the agent")
    try:
        import openai  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        raise AgentError(f"the OpenAI SDK with Realtime support is missing ({exc}): "
                         "pip install 'openai[realtime]'") from exc


def websocket_base_url(base_url: str) -> str:
    """The Realtime socket's base for an HTTP API base: http -> ws, https -> wss, same host and path."""
    scheme, sep, rest = base_url.partition("://")
    if not sep:
        raise AgentError(f"{base_url!r} is not a URL: give http(s)://HOST/v1")
    return {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme) + "://" + rest


def make_client(options: AgentOptions):
    """An OpenAI client for the Realtime API, honouring OPENAI_BASE_URL (and options.base_url)."""
    from openai import OpenAI

    base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or None
    ws_base = websocket_base_url(base_url) if base_url else None
    return OpenAI(api_key=os.environ.get("OPENAI_API_KEY"), base_url=base_url, websocket_base_url=ws_base)


class AnswerAudio:
    """The assistant's speech, mono float32 at REALTIME_RATE_HZ, from arrival until it plays.

    It is the live session's audio source in agent mode: `read` gives one CHUNK_MS block per tick of a
    real-time clock (silence between answers). `read_ahead` gives audio past what was read, for the
    lip-sync service, which then decides mouths before their sound plays. Each part is tagged with
    its conversation item, so an interruption can say how much of an item was heard.
    """

    def __init__(self):
        self.rate_hz = REALTIME_RATE_HZ
        self.overruns = 0  # never: answers wait for their turn to play
        self._lock = threading.Lock()
        self._parts: deque[tuple[np.ndarray, str | None]] = deque()  # item None: silence
        self._ahead = 0  # samples at the head of _parts already given out by read_ahead
        self._item: str | None = None  # the item read last
        self._read_of_item = 0  # samples of that item read so far
        self._ticker = Ticker(chunk_samples(self.rate_hz) / self.rate_hz)

    def add(self, samples: np.ndarray, item_id: str) -> None:
        """Queue (n,) float32 samples of item `item_id` after everything already queued."""
        with self._lock:
            self._parts.append((samples, item_id))

    def _pop(self, n: int) -> np.ndarray:
        """Remove and return the next n samples (zeros past the end), counting what each item played."""
        out = np.zeros(n, np.float32)
        filled = 0
        while filled < n and self._parts:
            samples, item = self._parts.popleft()
            part = samples[:n - filled]
            out[filled:filled + len(part)] = part
            filled += len(part)
            if len(part) < len(samples):
                self._parts.appendleft((samples[len(part):], item))
            if item is not None:
                if item != self._item:
                    self._item, self._read_of_item = item, 0
                self._read_of_item += len(part)
        return out

    def _peek(self, start: int, n: int) -> np.ndarray:
        """Up to n queued samples from position `start`, leaving them queued."""
        pieces, skip, want = [], start, n
        for samples, _ in self._parts:
            if want == 0:
                break
            if skip >= len(samples):
                skip -= len(samples)
                continue
            pieces.append(samples[skip:skip + want])
            want -= len(pieces[-1])
            skip = 0
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def read(self, timeout_s: float) -> tuple[np.ndarray, float] | None:
        """The next block to play when the clock reaches it (None when that is more than timeout_s away)."""
        tick = self._ticker.wait(timeout_s)
        if tick is None:
            return None
        n = chunk_samples(self.rate_hz)
        with self._lock:
            block = self._pop(n)
            self._ahead = max(0, self._ahead - n)
        return block, tick

    def read_ahead(self, max_samples: int) -> np.ndarray:
        """Up to max_samples queued after everything read or read ahead so far."""
        with self._lock:
            out = self._peek(self._ahead, max(0, max_samples))
            self._ahead += len(out)
            return out

    def interrupt(self) -> tuple[str | None, int]:
        """Stop the answer now: (the item being played, samples of it read so far), or (None, 0) when none was.

        What was already read ahead stays queued as silence, so later audio keeps its place on the
        session's clock; the rest is dropped.
        """
        with self._lock:
            if not any(item is not None for _, item in self._parts):
                return None, 0
            self._parts.clear()
            if self._ahead:
                self._parts.append((np.zeros(self._ahead, np.float32), None))
            return self._item, self._read_of_item

    def close(self) -> None:
        pass


class RealtimeAgent:
    """One conversation with OpenAI Realtime in two threads, connected again whenever it fails.

    answer: where the answers' audio goes (an `AnswerAudio`). user_audio: the user's voice (the
    microphone, or a file played as one). interrupt: stops the playing answer and returns (item id
    or None, milliseconds of it that were played).
    """

    def __init__(self, options: AgentOptions, *, answer: AnswerSource, user_audio: AudioSource,
                 interrupt: Callable[[], tuple[str | None, int]], on_message: MessageFn,
                 on_transcript: TranscriptFn):
        self.options, self.answer, self.user_audio = options, answer, user_audio
        self._interrupt, self._say, self._transcript = interrupt, on_message, on_transcript
        self.caption = ""  # the current answer's text, for the window
        self.status = "connecting to the agent"  # for the window; empty while all is well
        self.connections = 0  # sessions the server accepted (more than one: it reconnected)
        self._client = make_client(options)
        self._socket = None  # the open connection, configured or not (stop closes it)
        self._conn = None  # the open connection once the session is configured
        self._stop = threading.Event()
        self._cut_items: set[str] = set()  # interrupted answers: their late audio is ignored
        self._threads = [threading.Thread(target=self._converse, name="agent", daemon=True),
                         threading.Thread(target=self._send_user_audio, name="agent-mic", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        conn = self._socket
        if conn is not None:
            self._close(conn)
        for t in self._threads:
            t.join(timeout=CONNECT_TIMEOUT_S)

    def _session_config(self) -> dict:
        pcm = {"type": "audio/pcm", "rate": REALTIME_RATE_HZ}
        return {"type": "realtime", "instructions": self.options.instructions, "output_modalities": ["audio"],
                "audio": {"input": {"format": pcm, "turn_detection": {"type": "server_vad"},
                                    "transcription": {"model": TRANSCRIPTION_MODEL}},
                          "output": {"format": pcm, "voice": self.options.voice}}}

    def _converse(self) -> None:
        from openai import OpenAIError
        from websockets.exceptions import WebSocketException

        delay_s = RECONNECT_DELAY_S
        while not self._stop.is_set():
            try:
                with self._client.realtime.connect(
                        model=self.options.realtime_model,
                        websocket_connection_options={"open_timeout": CONNECT_TIMEOUT_S}) as conn:
                    self._socket = conn
                    if self._stop.is_set():
                        break
                    conn.session.update(session=self._session_config())
                    for event in conn:
                        if self._stop.is_set():
                            break
                        if event.type == "session.updated" and self._conn is None:
                            self._conn, self.status, delay_s = conn, "", RECONNECT_DELAY_S
                            self.connections += 1
                            self._say("agent: connected" + (" again" if self.connections > 1 else ""))
                        self._handle(conn, event)
                reason = "the server closed the connection"
            except (OpenAIError, WebSocketException, OSError, _ErrorEvent) as exc:
                reason = str(exc) or type(exc).__name__
            self._socket = self._conn = None
            self._go_idle()
            if self._stop.is_set():
                return
            self.status = "agent: reconnecting..."
            self._say(f"agent: {reason}; connecting again in {delay_s:.0f} s")
            self._stop.wait(delay_s)
            delay_s = min(2 * delay_s, MAX_RECONNECT_DELAY_S)

    def _handle(self, conn, event) -> None:
        kind = event.type
        if kind == "input_audio_buffer.speech_started":
            item, played_ms = self._interrupt()
            if item is not None:
                self._cut_items.add(item)
                conn.conversation.item.truncate(item_id=item, content_index=0, audio_end_ms=played_ms)
            self.caption = ""
        elif kind == "response.created":
            self.caption = ""
        elif kind == "response.output_audio.delta":
            if event.item_id not in self._cut_items:
                pcm = base64.b64decode(event.delta)
                self.answer.add(pcm_to_float(pcm, sample_type="s16", channels=1)[:, 0], event.item_id)
        elif kind == "response.output_audio_transcript.delta":
            if event.item_id not in self._cut_items:
                self.caption += event.delta
                self._transcript("assistant", event.delta, False)
        elif kind == "response.output_audio_transcript.done":
            self._transcript("assistant", "", True)
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._transcript("user", event.transcript, True)
        elif kind == "error":
            raise _ErrorEvent(f"the server reported an error: {event.error.message}")

    def _go_idle(self) -> None:
        """Drop the answer in progress (the avatar rests) and its caption."""
        self._interrupt()
        self.caption = ""

    def _send_user_audio(self) -> None:
        """User audio -> 24 kHz PCM16 -> the server; read (and dropped) even while not connected."""
        from openai import OpenAIError
        from websockets.exceptions import WebSocketException

        from lipsync_cli.media.audio import StreamResampler

        rate = self.user_audio.rate_hz
        resampler = StreamResampler(from_rate_hz=rate, to_rate_hz=REALTIME_RATE_HZ) if rate != REALTIME_RATE_HZ \
            else None
        while not self._stop.is_set():
            got = self.user_audio.read(READ_TIMEOUT_S)
            if got is None:
                continue
            block = resampler.push(got[0]) if resampler is not None else got[0]
            conn = self._conn
            if conn is None or not len(block):
                continue
            try:
                conn.input_audio_buffer.append(audio=base64.b64encode(float_to_pcm16(block)[0]).decode("ascii"))
            except (OpenAIError, WebSocketException, OSError) as exc:
                log.debug("user audio not sent: %s", exc)  # the connection is going; _converse reconnects

    @staticmethod
    def _close(conn) -> None:
        try:
            conn.close()
        except Exception as exc:  # closing a socket that already failed: nothing more to do
            log.debug("closing the agent connection: %s", exc)


class _ErrorEvent(Exception):
    """An `error` event from the server: the session is started afresh."""

