"""`lipsync live`: the microphone (or a file played as one, or a voice agent's answers) makes the avatar
speak in a window, in real time.

One audio clock runs the session: the source's samples, counted from the start, are the timeline.
Output frame `g` (a "slot") shows the audio from `first_sample_of_frame(g)` on, exactly as in
`render`, and always model frame `ping_pong(g)`, so the idle avatar, the service's frames and the
recording all follow one loop whatever happens to the service.

Threads, with bounded queues between them:
- audio: reads the source in real time, plays it (file and agent modes), records it, and feeds it to
- stream: the service's bidirectional call, restarted on the next frame boundary whenever it fails;
  each reply is tagged with its slot;
- main: the frame scheduler. It shows each reply when its sound plays (at once when late), the
  avatar's own frame when the service has nothing (away, or an answer was cut off), composites
  with `compositor.paste_reply`, draws the window and writes `--record`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av: a window may open in this process)
import numpy as np

from lipsync_cli.live.agent import READ_TIMEOUT_S, AgentOptions, TranscriptFn
from lipsync_cli.live.audio_io import MessageFn, MicSource, PacedFile, Speaker
from lipsync_cli.core.compositor import paste_reply
from lipsync_cli.errors import AudioError, DeviceError, LipsyncError, ModelNotFoundError, ServiceError
from lipsync_cli.media.store import Model, ModelStore
from lipsync_cli.core.timing import first_sample_of_frame, frame_count, frame_of_sample, ping_pong
from lipsync_cli.live.window import LiveWindow, Overlay, check_display

log = logging.getLogger(__name__)

FILE_AV_DELAY_MS = 80  # a played file's sound waits this long, about what the service needs to decide a mouth
FEED_AHEAD_MS = 200  # agent answers reach the service this far before they play (and what a barge-in wastes)
MAX_BACKLOG_FRAMES = 3  # more replies than this waiting to be shown: the oldest are dropped
IDLE_LAG_FRAMES = 4  # without the service, idle frames trail the audio clock by this much (its usual delay)
STALL_S = 0.3  # no reply for this long: show idle frames until replies come again
RECONNECT_DELAY_S = 0.5
STREAM_QUEUE_BLOCKS = 100  # 2 s of audio waiting for the service before the stream counts as stuck
FRAME_QUEUE_FRAMES = 100
FILE_TAIL_S = 0.5  # with --input and no --duration: stop this long after the file ends (the mouth closes)
WAIT_S = 0.005  # the scheduler's poll step
SOURCE_SILENT_S = 3.0  # a microphone that delivers nothing for this long has failed
FPS_WINDOW_S = 1.0
LATENCY_WINDOW_FRAMES = 25  # the window's latency is the median of this many recent frames

FrameFn = Callable[[np.ndarray, int, bool], None]  # (composited BGR frame, slot, from the service)


@dataclass(frozen=True)
class LiveOptions:
    model: str | None = None  # a model name or video path; None: the only model found, else the bundled sample
    input: Path | None = None  # a file played as if it were the microphone (and on the speakers); None: the mic
    device: str | None = None  # the microphone: a device index or part of its name; None: the default input
    record: Path | None = None  # an MP4 to write what is shown, with its sound; None: nothing written
    duration_s: float | None = None  # stop by itself after this long; None: on q, Esc or Ctrl-C (--input: its end)
    server: str | None = None  # a running lip-sync service (HOST:PORT, ...); None: one started in-process
    window: bool = True  # show the window; False: headless, frames go only to on_frame (benchmarks)
    agent: AgentOptions | None = None  # talk with OpenAI Realtime: its answers drive the avatar


@dataclass(frozen=True)
class LiveSummary:
    frames_shown: int  # frames put on screen (or handed to on_frame), idle ones included
    frames_dropped: int  # replies from the service that came too late to be shown (or found the queue full)
    idle_frames: int  # frames of the avatar's own video shown because the service had none
    fallbacks: int  # replies shown as the avatar's own frame because their mouth image or bounds were unusable
    # audio captured (agent: an answer's audio arrived) -> its frame shown, over frames from the service;
    # with speakers this includes waiting for the frame's sound to be heard
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ready_p50_ms: float | None  # audio captured -> its frame back from the service (before waiting for the sound)
    ready_p95_ms: float | None
    first_frame_s: float | None  # session start -> the first frame from the service shown
    reconnects: int  # times the service stream was lost and started again
    seconds: float  # how long the session ran
    record: Path | None  # the MP4 written, if any


class _LipStream:
    """The service's StreamAudio call in its own thread, started again whenever it fails.

    `feed` takes the timeline in order; each (re)started call begins at the next frame boundary and
    names that frame as its first, so reply i of a call is slot first + i.
    """

    def __init__(self, target: str, model_name: str, *, rate_hz: int, model: Model, on_message: MessageFn):
        self.target, self.model_name, self.rate_hz, self.fps = target, model_name, rate_hz, model.fps
        self.frames: queue.Queue = queue.Queue(maxsize=FRAME_QUEUE_FRAMES)  # (slot, reply, arrived_at_s)
        self.streaming = False  # replies are coming
        self.last_reply_s = 0.0
        self.status = "connecting to the lip-sync service"
        self.reconnects = 0
        self.lost = 0  # replies dropped because the scheduler's queue was full
        self.error: LipsyncError | None = None  # a failure reconnecting cannot cure (unknown model)
        self._say = on_message
        self._lock = threading.Lock()
        self.fed = 0  # samples of the timeline fed so far
        self._blocks: queue.Queue | None = None  # the running call's input, None while there is none
        self._start_sample = 0
        self._call_done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lip-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._call_done.set()
        self._thread.join(timeout=5)

    def feed(self, block: np.ndarray, captured_at_s: float) -> None:
        """The next samples of the timeline (never waits: a call that cannot keep up is restarted)."""
        with self._lock:
            start, self.fed = self.fed, self.fed + len(block)
            if self._blocks is None or start + len(block) <= self._start_sample:
                return
            try:
                self._blocks.put_nowait((block[max(0, self._start_sample - start):], captured_at_s))
            except queue.Full:
                self._blocks = None
                self._call_done.set()

    def _chunks(self, blocks: queue.Queue, done: threading.Event):
        while not done.is_set():
            try:
                yield blocks.get(timeout=READ_TIMEOUT_S)
            except queue.Empty:
                continue

    def _run(self) -> None:
        from lipsync_cli.rpc.client import LipSyncClient

        was_streaming = waiting_said = False
        while not self._stop.is_set():
            with self._lock:
                first = frame_count(self.fed, fps=self.fps, sample_rate_hz=self.rate_hz)  # the next frame boundary
                self._start_sample = first_sample_of_frame(first, fps=self.fps, sample_rate_hz=self.rate_hz)
                blocks = self._blocks = queue.Queue(maxsize=STREAM_QUEUE_BLOCKS)
                done = self._call_done = threading.Event()
            client = None
            problem = "the stream stopped"
            try:
                client = LipSyncClient(self.target)
                for reply in client.stream_audio(self.model_name, self._chunks(blocks, done), self.rate_hz, 1,
                                                 first_frame=first):
                    self.last_reply_s = time.monotonic()
                    if not self.streaming:
                        self.streaming, self.status = True, ""
                        if was_streaming:
                            self._say("the lip-sync service is back")
                        was_streaming = True
                    try:
                        self.frames.put_nowait((first + reply.index, reply, self.last_reply_s))
                    except queue.Full:
                        self.lost += 1
            except (ModelNotFoundError, AudioError) as exc:
                self.error = exc
                return
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


class _Timeline:
    """The session's audio clock: what was played (and recorded) and what the service was fed."""

    def __init__(self, rate_hz: int, lip: _LipStream, speaker: Speaker | None, record: bool):
        self.rate_hz, self.lip, self.speaker = rate_hz, lip, speaker
        self.played = 0  # samples played (or captured, for the microphone)
        self.cuts: list[tuple[int, int]] = []  # sample ranges fed but never played (interrupted answers)
        self.recorded: queue.SimpleQueue | None = queue.SimpleQueue() if record else None
        self._lock = threading.Lock()

    @property
    def fed(self) -> int:
        """Samples handed to the service (the stream keeps the count)."""
        return self.lip.fed

    def play(self, block: np.ndarray, captured_at_s: float) -> None:
        """The next block of sound; what of it the service has not had yet goes to it now."""
        with self._lock:
            if self.fed < self.played + len(block):
                self._feed(block[self.fed - self.played:], captured_at_s)
            if self.speaker is not None:
                self.speaker.play(block)
            if self.recorded is not None:
                self.recorded.put(block)
            self.played += len(block)

    def feed_ahead(self, samples: np.ndarray, captured_at_s: float) -> None:
        """Samples that will play after everything fed so far (agent answers, early)."""
        with self._lock:
            self._feed(samples, captured_at_s)

    def _feed(self, samples: np.ndarray, captured_at_s: float) -> None:
        if len(samples):
            self.lip.feed(samples, captured_at_s)

    def interrupt(self, stop_answer: Callable[[], tuple[str | None, int]]) -> tuple[str | None, int]:
        """Silence the answer playing now: (its item, milliseconds of it played) or (None, 0)."""
        with self._lock:
            item, read = stop_answer()
            if self.fed > self.played:
                self.cuts.append((self.played, self.fed))
            dropped = self.speaker.flush() if self.speaker is not None else 0
        return item, max(0, read - dropped) * 1000 // self.rate_hz

    def heard_sample(self) -> int:
        """The sample being heard about now: played, less what waits in the speakers."""
        delay_s = self.speaker.delay_s if self.speaker is not None else 0.0
        return self.played - int(delay_s * self.rate_hz)

    def is_cut(self, start_sample: int) -> bool:
        return any(a <= start_sample < b for a, b in self.cuts)


class _Recorder:
    """--record: one frame per slot (what was shown), with the played sound, through Mp4Writer."""

    def __init__(self, path: Path, model: Model, rate_hz: int):
        from lipsync_cli.media.video import Mp4Writer

        self.fps, self.rate_hz = model.fps, rate_hz
        self.writer = Mp4Writer(path, fps=model.fps, width=model.width, height=model.height,
                                audio_rate_hz=rate_hz, audio_channels=1)
        self._audio = np.zeros(0, np.float32)
        self._audio_written = 0

    def write(self, frame: np.ndarray, slot: int, recorded: queue.SimpleQueue) -> None:
        """Frames up to and including `slot` (repeating this one over slots never shown) and their sound."""
        while self.writer.frames_written <= slot:
            self.writer.write_frame(frame)
        self._write_audio(recorded, pad=False)

    def _write_audio(self, recorded: queue.SimpleQueue, *, pad: bool) -> None:
        blocks = [self._audio]
        while not recorded.empty():
            blocks.append(recorded.get())
        self._audio = np.concatenate(blocks)
        end = first_sample_of_frame(self.writer.frames_written, fps=self.fps, sample_rate_hz=self.rate_hz)
        n = end - self._audio_written
        if pad and len(self._audio) < n:
            self._audio = np.concatenate([self._audio, np.zeros(n - len(self._audio), np.float32)])
        n = min(n, len(self._audio))
        self.writer.write_audio(self._audio[:n])
        self._audio, self._audio_written = self._audio[n:], self._audio_written + n

    def finish(self, recorded: queue.SimpleQueue) -> None:
        """The sound up to the end of the last frame (silence where none was played), then the file."""
        self._write_audio(recorded, pad=True)
        self.writer.close()


class _Scheduler:
    """The main thread: which frame shows now; composites it, shows it, records it, and keeps count."""

    def __init__(self, model: Model, timeline: _Timeline, lip: _LipStream, *, window: LiveWindow | None,
                 recorder: _Recorder | None, on_frame: FrameFn | None, caption: Callable[[], str],
                 status: Callable[[], str], started_s: float):
        self.model, self.timeline, self.lip = model, timeline, lip
        self.window, self.recorder, self.on_frame = window, recorder, on_frame
        self.caption, self.status, self.started_s = caption, status, started_s
        self.rate_hz, self.fps = timeline.rate_hz, model.fps
        self.next_slot = 0
        self.pending: dict[int, object | None] = {}  # slot -> its reply, or None for the idle frame
        self.shown = self.dropped = self.idle = self.fallbacks = 0
        self.latencies_ms: list[float] = []  # captured -> shown
        self.ready_ms: list[float] = []  # captured -> reply arrived
        self.first_frame_s: float | None = None
        self._recent_ms: deque[float] = deque(maxlen=LATENCY_WINDOW_FRAMES)
        self._shown_at: deque[float] = deque()
        self._speech = False

    def _slot_of(self, sample: int) -> int:
        return frame_of_sample(max(0, sample), fps=self.fps, sample_rate_hz=self.rate_hz)

    def step(self) -> bool:
        """Wait a moment for replies and show at most one frame; False once the user asked to quit."""
        got = []
        try:
            heard_slot = self._slot_of(self.timeline.heard_sample())
            backlog = any(s <= heard_slot for s in self.pending)
            got.append(self.lip.frames.get_nowait() if backlog else self.lip.frames.get(timeout=WAIT_S))
            while True:
                got.append(self.lip.frames.get_nowait())
        except queue.Empty:
            pass
        for slot, reply, arrived in got:
            if reply.captured_at_s:
                self.ready_ms.append(1000 * (arrived - reply.captured_at_s))
            start = first_sample_of_frame(slot, fps=self.fps, sample_rate_hz=self.rate_hz)
            # the sound of a cut-off answer never plays: its mouths must not show either
            self.pending[slot] = None if self.timeline.is_cut(start) else reply
        heard_slot = self._slot_of(self.timeline.heard_sample())  # again: the wait above let the sound move on
        # a small backlog is shown oldest first, to catch up; past that, and behind what was shown, dropped
        due = sorted(s for s in self.pending if s <= heard_slot)
        stale = set(due[:-MAX_BACKLOG_FRAMES]) | {s for s in due if s < self.next_slot}
        for s in stale:
            del self.pending[s]
        self.dropped += len(stale)
        due = [s for s in due if s not in stale]
        if due:
            return self._show(due[0], self.pending.pop(due[0]))
        idle_slot = heard_slot - IDLE_LAG_FRAMES
        quiet = not self.lip.streaming or time.monotonic() - self.lip.last_reply_s > STALL_S
        if quiet and idle_slot >= self.next_slot and idle_slot not in self.pending:
            return self._show(idle_slot, None)
        return self.window.poll() if self.window is not None else True

    def _show(self, slot: int, reply) -> bool:
        index = ping_pong(slot, self.model.n_frames)
        frame = self.model.frame(index)
        now = time.monotonic()
        if reply is None:
            self.idle += 1
            self._speech = False
        else:
            if not paste_reply(frame, reply.prediction_data, list(reply.bounds), reference=self.model.region(index)):
                self.fallbacks += 1
            self._speech = reply.speech
            if reply.captured_at_s:
                latency_ms = 1000 * (now - reply.captured_at_s)
                self.latencies_ms.append(latency_ms)
                self._recent_ms.append(latency_ms)
            if self.first_frame_s is None:
                self.first_frame_s = now - self.started_s
        self.next_slot = slot + 1
        self.shown += 1
        self._shown_at.append(now)
        while now - self._shown_at[0] > FPS_WINDOW_S:
            self._shown_at.popleft()
        if self.recorder is not None:
            self.recorder.write(frame, slot, self.timeline.recorded)
        if self.on_frame is not None:
            self.on_frame(frame, slot, reply is not None)
        if self.window is None:
            return True
        latency = float(np.median(self._recent_ms)) if self._recent_ms else None
        overlay = Overlay(fps=len(self._shown_at) / FPS_WINDOW_S, latency_ms=latency, speech=self._speech,
                          status=self.status(), caption=self.caption())
        return self.window.show(frame, overlay)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _open_source(options: LiveOptions, say: MessageFn):
    """(the source that drives the avatar, the user's voice for the agent or None, the speakers or None)."""
    from lipsync_cli.live.agent import REALTIME_RATE_HZ, AnswerAudio
    from lipsync_cli.media.audio import load_audio, resample, to_mono
    from lipsync_cli.media.video import aac_rate_for

    def file_at(rate_hz: int | None) -> PacedFile:
        clip = load_audio(options.input)
        rate_hz = rate_hz or aac_rate_for(clip.original_rate_hz)
        return PacedFile(resample(to_mono(clip.original), from_rate_hz=clip.original_rate_hz, to_rate_hz=rate_hz),
                         rate_hz)

    if options.agent is not None:
        user = file_at(REALTIME_RATE_HZ) if options.input else MicSource(options.device)
        return AnswerAudio(), user, Speaker(REALTIME_RATE_HZ, on_message=say)
    if options.input is not None:
        source = file_at(None)
        return source, None, Speaker(source.rate_hz, on_message=say, delay_ms=FILE_AV_DELAY_MS)
    return MicSource(options.device), None, None


def _pump(source, timeline: _Timeline, stop: threading.Event, failures: list[Exception]) -> None:
    """The audio thread: the source's blocks, in real time, onto the timeline (and agent answers ahead)."""
    read_ahead = getattr(source, "read_ahead", None)
    ahead_samples = timeline.rate_hz * FEED_AHEAD_MS // 1000
    last_block_s = time.monotonic()
    try:
        while not stop.is_set():
            got = source.read(READ_TIMEOUT_S)
            if got is None:
                if time.monotonic() - last_block_s > SOURCE_SILENT_S:
                    raise DeviceError(f"the audio source gave nothing for {SOURCE_SILENT_S:.0f} s: "
                                      "is the microphone still connected? (see --list-devices)")
                continue
            last_block_s = time.monotonic()
            block, captured_at_s = got
            timeline.play(block, captured_at_s)
            if read_ahead is not None:
                timeline.feed_ahead(read_ahead(timeline.played + ahead_samples - timeline.fed), captured_at_s)
    except Exception as exc:  # handed to the main thread, which ends the session with it
        failures.append(exc)


def check_live(options: LiveOptions) -> None:
    """Fail at once, with one line, where the session could not run: no display, a bad --server, no agent key."""
    from lipsync_cli.live.agent import check_agent
    from lipsync_cli.rpc.client import channel_target

    if options.window:
        check_display()
    if options.server is not None:
        channel_target(options.server)
    if options.agent is not None:
        check_agent(options.agent)


def run_live(options: LiveOptions, *, store: ModelStore, on_message: MessageFn | None = None,
             on_transcript: TranscriptFn | None = None, on_frame: FrameFn | None = None) -> LiveSummary:
    """Run one live session until q/Esc, Ctrl-C, options.duration_s, or the end of options.input.

    on_message(text): what the user should know (service lost, no speakers, agent errors).
    on_transcript(role, text, final): the conversation, as it streams (agent mode).
    on_frame(frame, slot, from_service): each composited (H, W, 3) BGR frame as it is shown.
    Everything that can fail for want of a display, key, device, file or model fails before any
    window opens.
    """
    from lipsync_cli.live.agent import RealtimeAgent
    from lipsync_cli.rpc.client import embedded_service
    from lipsync_cli.media.models import default_model

    started_s = time.monotonic()
    say = on_message or (lambda text: log.info("%s", text))
    check_live(options)
    video = store.resolve(options.model) if options.model else default_model(models_dir=store.models_dir)
    model = store.get(video)
    model_name = store.register(video)
    stop = threading.Event()
    failures: list[Exception] = []
    with contextlib.ExitStack() as stack:
        source, user_audio, speaker = _open_source(options, say)
        stack.callback(source.close)
        if user_audio is not None:
            stack.callback(user_audio.close)
        if speaker is not None:
            stack.callback(speaker.close)
        recorder = _Recorder(options.record, model, source.rate_hz) if options.record else None
        if recorder is not None:
            stack.callback(recorder.writer.abort)  # a no-op once finished
        target = options.server or stack.enter_context(embedded_service(store))
        lip = _LipStream(target, model_name, rate_hz=source.rate_hz, model=model, on_message=say)
        timeline = _Timeline(source.rate_hz, lip, speaker, record=recorder is not None)
        agent = None
        if options.agent is not None:
            agent = RealtimeAgent(options.agent, answer=source, user_audio=user_audio,
                                  interrupt=lambda: timeline.interrupt(source.interrupt), on_message=say,
                                  on_transcript=on_transcript or (lambda role, text, final: None))
        window = LiveWindow(model.width, model.height) if options.window else None
        if window is not None:
            stack.callback(window.close)
        lip.start()
        stack.callback(lip.stop)
        if agent is not None:
            agent.start()
            stack.callback(agent.stop)
        pump = threading.Thread(target=_pump, args=(source, timeline, stop, failures), name="audio", daemon=True)
        pump.start()
        stack.callback(pump.join, 5)
        stack.callback(stop.set)
        status = (lambda: " | ".join(s for s in (lip.status, agent.status) if s)) if agent is not None \
            else (lambda: lip.status)
        scheduler = _Scheduler(model, timeline, lip, window=window, recorder=recorder, on_frame=on_frame,
                               caption=(lambda: agent.caption) if agent is not None else (lambda: ""),
                               status=status, started_s=started_s)
        end_sample = None
        if options.input is not None and options.agent is None and options.duration_s is None:
            end_sample = len(source.samples) + int(FILE_TAIL_S * source.rate_hz)
        try:
            while True:
                if failures:
                    raise failures[0]
                if lip.error is not None:
                    raise lip.error
                if options.duration_s is not None and time.monotonic() - started_s >= options.duration_s:
                    break
                if end_sample is not None and timeline.played >= end_sample:
                    break
                if not scheduler.step():
                    break
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the session like q; the recording is kept
        stop.set()
        pump.join(timeout=5)
        if recorder is not None:
            recorder.finish(timeline.recorded)
        seconds = time.monotonic() - started_s
    overruns = getattr(source, "overruns", 0) + getattr(user_audio, "overruns", 0)
    if overruns:
        say(f"{overruns} blocks of microphone audio were dropped: the machine was too busy to read them")
    return LiveSummary(frames_shown=scheduler.shown, frames_dropped=scheduler.dropped + lip.lost,
                       idle_frames=scheduler.idle, fallbacks=scheduler.fallbacks,
                       latency_p50_ms=_percentile(scheduler.latencies_ms, 50),
                       latency_p95_ms=_percentile(scheduler.latencies_ms, 95),
                       ready_p50_ms=_percentile(scheduler.ready_ms, 50), ready_p95_ms=_percentile(scheduler.ready_ms, 95),
                       first_frame_s=scheduler.first_frame_s, reconnects=lip.reconnects, seconds=seconds,
                       record=options.record)
