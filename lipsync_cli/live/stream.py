"""The lip-sync service's StreamAudio call for a live session, in its own thread, restarted whenever it fails.

Each (re)started call begins at the next frame boundary of the timeline and names that frame as its
first, so frame i of a call is slot `first + i` whatever happened before.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import NamedTuple

import numpy as np

from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.timing import first_sample_of_frame, frame_count
from lipsync_cli.errors import AudioError, LipsyncError, ModelNotFoundError, ServiceError, ServiceFullError
from lipsync_cli.live.audio_io import READ_TIMEOUT_S, MessageFn
from lipsync_cli.live.worker import Worker
from lipsync_cli.media.store import Model
from lipsync_cli.rpc.client import LipSyncClient

RECONNECT_DELAY_S = 0.5
FULL_BACKOFF_MAX_S = 10.0  # a full service is asked again after 0.5, 1, 2, ... s, at most this
STREAM_QUEUE_BLOCKS = 200  # 2 s of the microphone's blocks waiting for the service before the stream counts as stuck
FRAME_QUEUE_FRAMES = 100
STALL_S = 0.3  # no frame for this long: the service counts as away (idle frames show) until frames come again


class Arrival(NamedTuple):
    slot: int  # the output frame it belongs to
    mouth: MouthFrame
    arrived_at_s: float  # time.monotonic() when it came back


class LipStream(Worker):
    """Audio in (`feed`), mouths out (`frames`, a queue of Arrival), across failures of the service.

    Use as a context manager: the thread runs inside the `with`.
    """

    def __init__(self, target: str, model_name: str, *, rate_hz: int, model: Model, on_message: MessageFn):
        self.target, self.model_name, self.rate_hz, self.fps = target, model_name, rate_hz, model.fps
        self.frames: queue.Queue[Arrival] = queue.Queue(maxsize=FRAME_QUEUE_FRAMES)
        self.streaming = False  # frames are coming
        self.last_frame_s = 0.0  # time.monotonic() of the last frame
        self.status = "connecting to the lip-sync service"  # for the window; empty while all is well
        self.reconnects = 0
        self.lost = 0  # frames dropped because the scheduler's queue was full
        self.error: LipsyncError | None = None  # a failure reconnecting cannot cure (unknown model)
        self._say = on_message
        self._lock = threading.Lock()
        self._fed_end = 0  # the timeline position after the last sample fed
        self._blocks: queue.Queue | None = None  # the running call's input, None while there is none
        self._start_sample = 0
        self._call_done = threading.Event()
        super().__init__("lip-stream")

    def _wake(self) -> None:
        self._call_done.set()  # the thread may be waiting for the running call to end

    def away(self, now_s: float) -> bool:
        """Whether the service gives nothing now: not streaming, or no frame for STALL_S."""
        return not self.streaming or now_s - self.last_frame_s > STALL_S

    def feed(self, block: np.ndarray, start_sample: int, captured_at_s: float) -> None:
        """The timeline's samples from start_sample on, in order (never waits: a stuck call is restarted)."""
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
                    self.last_frame_s = time.monotonic()
                    if not self.streaming:
                        self.streaming, self.status = True, ""
                        full_delay_s = RECONNECT_DELAY_S
                        if was_streaming:
                            self._say("the lip-sync service is back")
                        was_streaming = True
                    try:
                        self.frames.put_nowait(Arrival(first + mouth.index, mouth, self.last_frame_s))
                    except queue.Full:
                        self.lost += 1
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
                done.set()
                with self._lock:
                    if self._blocks is blocks:
                        self._blocks = None
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
