"""Where a live session's mouths come from, in a thread: audio in (`feed`), mouths out (`frames`).

- `EngineStream`: the core engine in this process (the default: no socket, no JPEG on the way).
- `LipStream`: a running lip-sync service's StreamAudio call (`--server`), restarted whenever it fails.

Each call (or engine) begins at the next frame boundary of the timeline and names that frame as its
first, so frame i of a call is slot `first + i` whatever happened before.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import NamedTuple

import numpy as np

from lipsync_cli.core.engine import LiveEngine, MouthFrame, PlannedMouths
from lipsync_cli.core.generator import MouthGenerator
from lipsync_cli.core.timing import first_sample_of_frame, frame_count
from lipsync_cli.errors import AudioError, ModelNotFoundError, ServiceError, ServiceFullError
from lipsync_cli.live.audio_io import READ_TIMEOUT_S, MessageFn
from lipsync_cli.live.worker import Worker
from lipsync_cli.media.store import Model
from lipsync_cli.rpc.client import LipSyncClient

RECONNECT_DELAY_S = 0.5
FULL_BACKOFF_MAX_S = 10.0  # a full service is asked again after 0.5, 1, 2, ... s, at most this
STREAM_QUEUE_BLOCKS = 200  # 2 s of the microphone's blocks waiting for the mouths before the call counts as stuck
FRAME_QUEUE_FRAMES = 100
STALL_S = 0.3  # no frame for this long: the mouths count as away (idle frames show) until frames come again


class Arrival(NamedTuple):
    slot: int  # the output frame it belongs to
    mouth: MouthFrame
    arrived_at_s: float  # time.monotonic() when it came back


class MouthStream(Worker):
    """Audio in (`feed`), mouths out (`frames`, a queue of Arrival); the player reads nothing else.

    A subclass's thread runs one call after another: `_open_call` starts each at the next frame
    boundary of what was fed, `_chunks` reads its audio (until a stuck call is ended by `feed`), and
    `_arrived` hands on each mouth. Use as a context manager: the thread runs inside the `with`.
    """

    def __init__(self, name: str, *, rate_hz: int, model: Model, status: str):
        self.rate_hz, self.fps = rate_hz, model.fps
        self.frames: queue.Queue[Arrival] = queue.Queue(maxsize=FRAME_QUEUE_FRAMES)
        self.streaming = False  # frames are coming
        self.last_frame_s = 0.0  # time.monotonic() of the last frame
        self.status = status  # for the window; empty while all is well
        self.reconnects = 0
        self.lost = 0  # frames dropped because the scheduler's queue was full
        self.error: Exception | None = None  # a failure going on cannot cure (unknown model): ends the session
        self._lock = threading.Lock()
        self._fed_end = 0  # the timeline position after the last sample fed
        self._blocks: queue.Queue | None = None  # the running call's input, None while there is none
        self._start_sample = 0
        self._call_done = threading.Event()
        super().__init__(name)

    def _wake(self) -> None:
        self._call_done.set()  # the thread may be waiting for the running call to end

    def away(self, now_s: float) -> bool:
        """Whether no mouths come now: not streaming, or no frame for STALL_S."""
        return not self.streaming or now_s - self.last_frame_s > STALL_S

    def feed(self, block: np.ndarray, start_sample: int, captured_at_s: float) -> None:
        """The timeline's samples from start_sample on, in order (never waits: a stuck call is ended)."""
        with self._lock:
            self._fed_end = start_sample + len(block)
            if self._blocks is None or self._fed_end <= self._start_sample:
                return
            try:
                self._blocks.put_nowait((block[max(0, self._start_sample - start_sample):], captured_at_s))
            except queue.Full:
                self._blocks = None
                self._call_done.set()

    @staticmethod
    def _chunks(blocks: queue.Queue, done: threading.Event):
        while not done.is_set():
            try:
                yield blocks.get(timeout=READ_TIMEOUT_S)
            except queue.Empty:
                continue

    def _open_call(self) -> tuple[int, queue.Queue, threading.Event]:
        """A new call's first slot and input: it starts at the next frame boundary of what was fed."""
        with self._lock:
            first = frame_count(self._fed_end, fps=self.fps, sample_rate_hz=self.rate_hz)
            self._start_sample = first_sample_of_frame(first, fps=self.fps, sample_rate_hz=self.rate_hz)
            blocks = self._blocks = queue.Queue(maxsize=STREAM_QUEUE_BLOCKS)
            done = self._call_done = threading.Event()
        return first, blocks, done

    def _end_call(self, blocks: queue.Queue, done: threading.Event) -> None:
        done.set()
        with self._lock:
            if self._blocks is blocks:
                self._blocks = None

    def _arrived(self, slot: int, mouth: MouthFrame) -> bool:
        """Hand on one mouth; True when it is the first since the stream was away."""
        self.last_frame_s = time.monotonic()
        first = not self.streaming
        if first:
            self.streaming, self.status = True, ""
        try:
            self.frames.put_nowait(Arrival(slot, mouth, self.last_frame_s))
        except queue.Full:
            self.lost += 1
        return first


class EngineStream(MouthStream):
    """The mouths of the core engine in this process (`lipsync live` with no --server)."""

    def __init__(self, model: Model, generator: MouthGenerator, *, rate_hz: int, plan: PlannedMouths | None = None):
        """plan: the mouths of a played file, by slot (`LiveEngine`'s plan)."""
        self.model, self.generator, self.plan = model, generator, plan
        super().__init__("lip-engine", rate_hz=rate_hz, model=model, status="")

    def _run(self) -> None:
        while not self._stop.is_set():
            first, blocks, done = self._open_call()
            engine = LiveEngine(self.model, self.generator, sample_rate_hz=self.rate_hz, first_frame=first,
                                plan=self.plan, plan_slot=first)
            try:
                for block, captured_at_s in self._chunks(blocks, done):
                    for mouth in engine.push(block, captured_at_s):
                        self._arrived(first + mouth.index, mouth)
            except Exception as exc:  # handed to the main thread, which ends the session with it
                self.error = exc
                return
            finally:
                self._end_call(blocks, done)


class LipStream(MouthStream):
    """The mouths of a running lip-sync service (`lipsync live --server`): its StreamAudio call,
    restarted whenever it fails, with the service's state in `status` for the window."""

    def __init__(self, target: str, model_name: str, *, rate_hz: int, model: Model, on_message: MessageFn):
        self.target, self.model_name = target, model_name
        self._say = on_message
        super().__init__("lip-stream", rate_hz=rate_hz, model=model, status="connecting to the lip-sync service")

    def _run(self) -> None:
        was_streaming = waiting_said = False
        full_delay_s = RECONNECT_DELAY_S
        while not self._stop.is_set():
            first, blocks, done = self._open_call()
            problem = "the stream stopped"
            client = None
            try:
                client = LipSyncClient(self.target)
                for mouth in client.stream_audio(self.model_name, self._chunks(blocks, done), self.rate_hz, 1,
                                                 first_frame=first):
                    if self._arrived(first + mouth.index, mouth):
                        full_delay_s = RECONNECT_DELAY_S
                        if was_streaming:
                            self._say("the lip-sync service is back")
                        was_streaming = True
            except (ModelNotFoundError, AudioError) as exc:
                self.error = exc
                return
            except ServiceFullError as exc:
                # every replica is full: say so and ask again later, less and less often
                self.streaming = False
                self.status = f"the lip-sync service is full: retrying in {full_delay_s:.1f} s"
                if not waiting_said:
                    waiting_said = True
                    self._say(f"{exc}; showing the idle avatar and retrying")
                self._stop.wait(full_delay_s)
                full_delay_s = min(2 * full_delay_s, FULL_BACKOFF_MAX_S)
                continue
            except ServiceError as exc:
                problem = str(exc)
            finally:
                self._end_call(blocks, done)
                if client is not None:
                    client.close()
            if self._stop.is_set():
                return
            if self.streaming:
                self.streaming = False
                self.reconnects += 1
                self.status = "reconnecting to the lip-sync service..."
                self._say(f"{problem}: showing the idle avatar and reconnecting")
            elif not was_streaming and not waiting_said:
                waiting_said = True
                self._say(f"{problem}; showing the idle avatar and trying again")
            self._stop.wait(RECONNECT_DELAY_S)
