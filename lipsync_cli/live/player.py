"""The live session's main thread: takes the service's mouths as they arrive, asks `schedule.plan`
which slot to show, composites it onto the avatar's frame and hands it to the sinks, keeping count.

Output slot `g` is always drawn on model frame `ping_pong(g)`, so the idle avatar, the service's
frames and the recording all follow one loop whatever happens to the service.
"The service" here and in the session's summary is wherever the mouths come from (`stream.py`):
the engine in this process, or a running service with --server.

Latency here is what a viewer sees, "sound->screen": from when the middle of a frame's sound was
heard (the microphone: when it entered it, by the device's ADC time; a file or an agent's answer:
when the speakers play it) to when its mouth is on screen (the window's show returned). With the
microphone it spans the capture buffer, the service's lookahead and work, the wait to show, and
the display; with speakers the sound waits for its mouth, so it stays near 0.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lipsync_cli.core.compositor import composite
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.timing import first_sample_of_frame, frame_of_sample, ping_pong
from lipsync_cli.live.schedule import FrameSchedule
from lipsync_cli.live.sink import FrameSink
from lipsync_cli.live.stream import MouthStream
from lipsync_cli.live.timeline import Timeline
from lipsync_cli.live.window import Overlay
from lipsync_cli.media.store import Model

WAIT_S = 0.005  # the longest the main thread waits for a mouth before looking at the clock again
FPS_WINDOW_S = 1.0
LATENCY_WINDOW_FRAMES = 25  # the window's latency is the median of this many recent frames


@dataclass
class Counts:
    """What the session showed, for its summary."""

    shown: int = 0  # frames handed to the sinks, idle ones included
    idle: int = 0  # the avatar's own frame, the service having none
    fallbacks: int = 0  # service frames shown as the avatar's own: their mouth image or bounds were unusable
    latencies_ms: list[float] = field(default_factory=list)  # sound->screen (see the module), service frames only
    ready_ms: list[float] = field(default_factory=list)  # the block completing a frame captured -> frame back
    first_frame_s: float | None = None  # session start -> the first service frame shown


class FramePlayer:
    """One `step` at a time: at most one frame shown.

    status, caption: the overlay's text, asked for at each frame shown.
    """

    def __init__(self, model: Model, timeline: Timeline, lip: MouthStream, sink: FrameSink, *,
                 status: Callable[[], str], caption: Callable[[], str], started_s: float):
        self.model, self.timeline, self.lip, self.sink = model, timeline, lip, sink
        self.status, self.caption, self.started_s = status, caption, started_s
        self.fps, self.rate_hz = model.fps, timeline.rate_hz
        self.schedule = FrameSchedule()
        self.counts = Counts()
        self._recent_ms: deque[float] = deque(maxlen=LATENCY_WINDOW_FRAMES)
        self._shown_at: deque[float] = deque()
        self._speech = False

    def heard_slot(self) -> int:
        """The slot whose sound is being heard now."""
        return frame_of_sample(max(0, self.timeline.heard_sample()), fps=self.fps, sample_rate_hz=self.rate_hz)

    def step(self) -> bool:
        """Take the mouths that arrived (waiting up to WAIT_S when none is due) and show at most one
        frame; False once the user asked to stop."""
        self._receive(wait=not self.schedule.has_due(self.heard_slot()))
        # the clock again: the wait above let the sound move on
        decided = self.schedule.take(heard_slot=self.heard_slot(), away=self.lip.away(time.monotonic()))
        if decided.slot is None:
            return self.sink.poll()
        return self._show(decided.slot, decided.mouth)

    def _receive(self, *, wait: bool) -> None:
        try:
            arrival = self.lip.frames.get(timeout=WAIT_S) if wait else self.lip.frames.get_nowait()
            while True:
                slot, mouth, arrived_s = arrival
                if mouth.captured_at_s:
                    self.counts.ready_ms.append(1000 * (arrived_s - mouth.captured_at_s))
                start = first_sample_of_frame(slot, fps=self.fps, sample_rate_hz=self.rate_hz)
                # the sound of a cut-off answer never plays: its mouths must not show either
                self.schedule.add(slot, None if self.timeline.is_cut(start) else mouth)
                arrival = self.lip.frames.get_nowait()
        except queue.Empty:
            pass

    def _show(self, slot: int, mouth: MouthFrame | None) -> bool:
        index = ping_pong(slot, self.model.n_frames)
        frame = self.model.frame(index)
        now = time.monotonic()
        counts = self.counts
        if mouth is None:
            counts.idle += 1
            self._speech = False
        else:
            pasted = mouth.image is not None and composite(frame, mouth.image, mouth.bounds,
                                                          reference=self.model.region(index))
            counts.fallbacks += not pasted
            self._speech = mouth.speech
            if counts.first_frame_s is None:
                counts.first_frame_s = now - self.started_s
        counts.shown += 1
        self._shown_at.append(now)
        while now - self._shown_at[0] > FPS_WINDOW_S:
            self._shown_at.popleft()
        latency = float(np.median(self._recent_ms)) if self._recent_ms else None
        # over the frames of the last FPS_WINDOW_S (fewer at the start: the rate, not the count, so a
        # session's first second does not read as a slow one)
        span_s = now - self._shown_at[0]
        fps = (len(self._shown_at) - 1) / span_s if span_s > 0 else 0.0
        overlay = Overlay(fps=fps, latency_ms=latency, speech=self._speech,
                          status=self.status(), caption=self.caption(), idle=mouth is None)
        going_on = self.sink.show(frame, slot, overlay)
        if mouth is not None:
            self._count_latency(slot, shown_s=time.monotonic())
        return going_on

    def _count_latency(self, slot: int, *, shown_s: float) -> None:
        """sound->screen of the service's frame for `slot`, on screen at shown_s."""
        middle = (first_sample_of_frame(slot, fps=self.fps, sample_rate_hz=self.rate_hz)
                  + first_sample_of_frame(slot + 1, fps=self.fps, sample_rate_hz=self.rate_hz)) // 2
        heard_s = self.timeline.heard_at_s(middle)
        if heard_s is not None:
            latency_ms = 1000 * (shown_s - heard_s)
            self.counts.latencies_ms.append(latency_ms)
            self._recent_ms.append(latency_ms)
