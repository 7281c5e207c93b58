"""`lipsync live`: the microphone (or a file played as one, or a voice agent's answers) makes the avatar
speak in a window, in real time.

One audio clock runs the session (`timeline.py`): the source's samples, counted from the start.
Output frame `g` (a "slot") shows the audio from `first_sample_of_frame(g)` on, exactly as in
`render`. Threads, with bounded queues between them:
- audio (`sources.AudioPump`): reads the source in real time, plays it, records it, feeds the mouths;
- stream (`stream.EngineStream`): the core engine in this process, or with --server
  (`stream.LipStream`) the service's call, restarted whenever it fails;
- agent (`agent.RealtimeAgent`, agent mode): the conversation;
- main (`player.FramePlayer`): which frame shows now (`schedule.plan`), composited, to the sinks
  (`sink.py`: the window, --record, a callback).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av: a window may open in this process)
import numpy as np

from lipsync_cli.core.engine import plan_mouths
from lipsync_cli.core.generators import make_generator
from lipsync_cli.live.agent import AgentOptions, RealtimeAgent, TranscriptFn, check_agent
from lipsync_cli.live.audio_io import MessageFn
from lipsync_cli.live.player import FramePlayer
from lipsync_cli.live.sink import CallbackSink, FrameFn, FrameSink, Recorder, Sinks, WindowSink
from lipsync_cli.live.sources import AudioPump, LiveAudio, open_audio
from lipsync_cli.live.stream import EngineStream, LipStream, MouthStream
from lipsync_cli.live.timeline import Timeline
from lipsync_cli.live.window import LATENCY_LABEL, check_display
from lipsync_cli.media.store import Model, ModelStore
from lipsync_cli.rpc.client import channel_target

log = logging.getLogger(__name__)

THREAD_SWITCH_S = 0.001  # how long a thread may hold the GIL while others wait (Python's default: 5 ms)
FILE_TAIL_S = 0.5  # with --input and no --duration: stop this long after the file ends (the mouth closes)
# with --input: how long the session waits for the file's planned mouths (about 1 s of work per 12 s of
# speech) before it starts playing; a longer file starts at once and takes its plan up in its first pause
PLAN_WAIT_S = 3.0


@dataclass(frozen=True)
class LiveOptions:
    model: str | None = None  # a model name or video path; None: the only model found, else the bundled sample
    input: Path | None = None  # a file played as if it were the microphone (and on the speakers); None: the mic
    device: str | None = None  # the microphone: a device index or part of its name; None: the default input
    record: Path | None = None  # an MP4 to write what is shown, with its sound; None: nothing written
    duration_s: float | None = None  # stop this long after the first frame; None: on q, Esc or Ctrl-C (--input: its end)
    server: str | None = None  # a running lip-sync service (HOST:PORT, ...); None: the engine in this process
    window: bool = True  # show the window; False: headless, frames go only to on_frame (benchmarks)
    agent: AgentOptions | None = None  # talk with OpenAI Realtime: its answers drive the avatar


@dataclass(frozen=True)
class LiveSummary:
    frames_shown: int  # frames put on screen (or handed to on_frame), idle ones included
    frames_dropped: int  # replies from the service that came too late to be shown (or found the queue full)
    idle_frames: int  # frames of the avatar's own video shown because the service had none
    fallbacks: int  # replies shown as the avatar's own frame because their mouth image or bounds were unusable
    # sound->screen (`latency_label`), over frames from the service: from when the middle of a frame's
    # sound was heard (microphone: entered it, by the device's ADC time; speakers: played) to its mouth
    # on screen. Microphone: capture buffer + lookahead + service + display; speakers: the picture's
    # offset from its sound (near 0: the sound waits for its mouth)
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ready_p50_ms: float | None  # the block completing a frame captured -> the frame back from the service
    ready_p95_ms: float | None
    first_frame_s: float | None  # session start -> the first frame from the service shown
    reconnects: int  # times the service stream was lost and started again
    seconds: float  # how long the session ran
    record: Path | None  # the MP4 written, if any
    latency_label: str = LATENCY_LABEL  # what latency_p50_ms / latency_p95_ms measure, for the user


def check_live(options: LiveOptions) -> None:
    """Fail at once, with one line, where the session could not run: no display, a bad --server, no agent key."""
    if options.window:
        check_display()
    if options.server is not None:
        channel_target(options.server)
    if options.agent is not None:
        check_agent(options.agent)


@contextlib.contextmanager
def _closed_with_outcome(sink: FrameSink) -> Iterator[FrameSink]:
    """Closes the sink on the way out: ok unless an exception is leaving (then the recording is dropped)."""
    try:
        yield sink
    except BaseException:
        sink.close(ok=False)
        raise
    sink.close(ok=True)


def _agent(options: AgentOptions | None, audio: LiveAudio, timeline: Timeline, say: MessageFn,
           on_transcript: TranscriptFn | None) -> RealtimeAgent | None:
    """The voice agent (not started yet) whose answers are `audio.answers`; None without --agent."""
    if options is None:
        return None
    answers = audio.answers
    return RealtimeAgent(options, answer=answers, user_audio=audio.user,
                         interrupt=lambda: timeline.interrupt(answers.interrupt), on_message=say,
                         on_transcript=on_transcript or (lambda role, text, final: None))


@contextlib.contextmanager
def _running(agent: RealtimeAgent | None) -> Iterator[RealtimeAgent | None]:
    if agent is not None:
        agent.start()
    try:
        yield agent
    finally:
        if agent is not None:
            agent.stop()


def _sinks(options: LiveOptions, model: Model, recorder: Recorder | None, on_frame: FrameFn | None) -> Sinks:
    """Where frames go, in this order: the recording, the caller, the window (the overlay drawn last).
    When the window cannot open, the recording already started is dropped."""
    sinks = Sinks([recorder] if recorder is not None else [])
    if on_frame is not None:
        sinks.sinks.append(CallbackSink(on_frame))
    if options.window:
        try:
            sinks.sinks.append(WindowSink(model))
        except BaseException:
            sinks.close(ok=False)
            raise
    return sinks


def _play_until_done(player: FramePlayer, pump: AudioPump, lip: MouthStream, *, stop_at_s: float | None,
                     end_sample: int | None) -> None:
    """Show frames until the user quits, the time is up, the file has played, or a thread failed."""
    try:
        while True:
            for error in (pump.error, lip.error):
                if error is not None:
                    raise error
            if stop_at_s is not None and time.monotonic() >= stop_at_s:
                return
            if end_sample is not None and player.timeline.played >= end_sample:
                return
            if not player.step():
                return
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the session like q; the recording is kept


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_live(options: LiveOptions, *, store: ModelStore, on_message: MessageFn | None = None,
             on_transcript: TranscriptFn | None = None, on_frame: FrameFn | None = None) -> LiveSummary:
    """Run one live session until q/Esc, Ctrl-C, options.duration_s, or the end of options.input.

    on_message(text): what the user should know (service lost, no speakers, agent errors).
    on_transcript(role, text, final): the conversation, as it streams (agent mode).
    on_frame(frame, slot, from_service): each composited (H, W, 3) BGR frame as it is shown.
    Everything that can fail for want of a display, key, device, file or model fails before any
    window opens.
    """
    started_s = time.monotonic()
    say = on_message or (lambda text: log.info("%s", text))
    check_live(options)
    with _quick_thread_switches():
        return _run_live(options, store=store, started_s=started_s, say=say, on_transcript=on_transcript,
                         on_frame=on_frame)


@contextlib.contextmanager
def _quick_thread_switches() -> Iterator[None]:
    """A sound's path crosses five threads (audio, stream, the service's, its reply, main): each one
    ready to run waits for the GIL up to the switch interval, 5 ms by default; 1 ms while live."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(THREAD_SWITCH_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _run_live(options: LiveOptions, *, store: ModelStore, started_s: float, say: MessageFn,
              on_transcript: TranscriptFn | None, on_frame: FrameFn | None) -> LiveSummary:
    model, model_name = store.open(options.model)
    with contextlib.ExitStack() as stack:
        # opened in this order, closed in reverse: everything is closed after all that uses it
        audio: LiveAudio = stack.enter_context(open_audio(input=options.input, device=options.device,
                                                          agent=options.agent is not None, on_message=say))
        rate_hz = audio.source.rate_hz
        recorder = Recorder(options.record, model, rate_hz) if options.record else None
        sink = stack.enter_context(_closed_with_outcome(_sinks(options, model, recorder, on_frame)))
        lip: MouthStream
        if options.server:
            lip = LipStream(options.server, model_name, rate_hz=rate_hz, model=model, on_message=say)
        else:
            # a file's mouths follow its phones, heard before it plays, as a render's do
            plan = plan_mouths(audio.known, fps=model.fps) if audio.known is not None else None
            generator = make_generator()
            generator.open_stream(model)  # its per-face work (core/calibration.py) before the clock starts
            lip = EngineStream(model, generator, rate_hz=rate_hz, plan=plan)
            if plan is not None and not plan.wait(PLAN_WAIT_S) and plan.error is not None:
                say(f"the file's phones could not be read ({plan.error}): the mouth follows the sound alone")
        stack.enter_context(lip)
        timeline = Timeline(rate_hz, feed=lip.feed, out=audio.out,
                            on_played=recorder.add_audio if recorder is not None else lambda block: None,
                            on_unheard=recorder.unheard if recorder is not None else lambda n: None)
        agent = stack.enter_context(_running(_agent(options.agent, audio, timeline, say, on_transcript)))
        pump = stack.enter_context(AudioPump(audio.source, timeline))
        player = FramePlayer(model, timeline, lip, sink, started_s=started_s,
                             status=lambda: " | ".join(s for s in (lip.status, agent.status if agent else "") if s),
                             caption=lambda: agent.caption if agent is not None else "")
        if recorder is not None and audio.out is None:  # the microphone: recorded as late as it was seen
            recorder.place = lambda slot: max(slot, player.heard_slot())
        # counted from here, not from the command: a busy machine's start-up does not shorten the session
        stop_at_s = time.monotonic() + options.duration_s if options.duration_s is not None else None
        end_sample = audio.end_sample + int(FILE_TAIL_S * rate_hz) \
            if audio.end_sample is not None and stop_at_s is None else None
        _play_until_done(player, pump, lip, stop_at_s=stop_at_s, end_sample=end_sample)
        seconds = time.monotonic() - started_s
    overruns = audio.source.overruns + (audio.user.overruns if audio.user is not None else 0)
    if overruns:
        say(f"{overruns} blocks of microphone audio were dropped: the machine was too busy to read them")
    counts = player.counts
    return LiveSummary(frames_shown=counts.shown, frames_dropped=player.schedule.dropped + lip.lost,
                       idle_frames=counts.idle, fallbacks=counts.fallbacks,
                       latency_p50_ms=_percentile(counts.latencies_ms, 50),
                       latency_p95_ms=_percentile(counts.latencies_ms, 95),
                       ready_p50_ms=_percentile(counts.ready_ms, 50), ready_p95_ms=_percentile(counts.ready_ms, 95),
                       first_frame_s=counts.first_frame_s, reconnects=lip.reconnects, seconds=seconds,
                       record=options.record)
