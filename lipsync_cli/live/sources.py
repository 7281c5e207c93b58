"""A live session's sound: which sources and speakers it opens, and the audio thread that plays the
driving source onto the timeline in real time.

- microphone: drives the avatar; nothing is played back (it would echo).
- --input FILE: played as if it were the microphone, and on the speakers; its whole sound is known
  ahead (`LiveAudio.known`), so its mouths can be planned from its phones.
- --agent: the agent's answers drive the avatar and play on the speakers; the microphone (or the
  file) is the user's voice, sent to the agent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lipsync_cli.errors import DeviceError
from lipsync_cli.live.agent import REALTIME_RATE_HZ, AnswerAudio
from lipsync_cli.live.audio_io import READ_TIMEOUT_S, AnswerSource, AudioSource, MessageFn, MicSource, PacedFile, Speaker
from lipsync_cli.live.timeline import SoundOut, Timeline
from lipsync_cli.live.worker import Worker
from lipsync_cli.media.audio import aac_rate_for, load_audio, resample, to_mono

# a played file's (or an agent's answer's) sound waits this long, what the service needs to decide a mouth
# from audio it could not have ahead (a file played as a microphone; the silence between answers, and an
# answer's start when it arrives just in time): the frame (40 ms at 25 fps), the driver's lookahead (~48 ms),
# one audio block (20 ms) and the service's work; then each sound is heard with its mouth, not before it
AV_DELAY_MS = 120
FEED_AHEAD_MS = 200  # agent answers reach the service this far before they play (and what a barge-in wastes)
SOURCE_SILENT_S = 3.0  # a source that delivers nothing for this long has failed


class LiveAudio(NamedTuple):
    source: AudioSource  # drives the avatar (and is what is played and recorded)
    out: SoundOut | None  # the speakers; None: nothing is played
    user: AudioSource | None = None  # agent mode: the user's voice, sent to the agent
    answers: AnswerSource | None = None  # agent mode: where its answers go (the same object as source)
    end_sample: int | None = None  # a file: the timeline position where it ends
    known: np.ndarray | None = None  # a file: its whole sound (mono, SAMPLE_RATE_HZ), whose mouths can be planned


def _paced_file(path: Path, rate_hz: int | None) -> tuple[PacedFile, np.ndarray]:
    """The file as a mono source at rate_hz (None: the nearest rate an MP4 can carry), and its sound at
    SAMPLE_RATE_HZ."""
    clip = load_audio(path)
    rate_hz = rate_hz or aac_rate_for(clip.original_rate_hz)
    return PacedFile(resample(to_mono(clip.original), from_rate_hz=clip.original_rate_hz, to_rate_hz=rate_hz),
                     rate_hz), clip.samples


@contextlib.contextmanager
def open_audio(*, input: Path | None, device: str | None, agent: bool, on_message: MessageFn
               ) -> Iterator[LiveAudio]:
    """The session's sources and speakers (see the module's docstring), closed in reverse on exit."""
    with contextlib.ExitStack() as stack:
        def opened(thing):
            return stack.enter_context(contextlib.closing(thing))

        if agent:
            answers = opened(AnswerAudio())
            user = opened(_paced_file(input, REALTIME_RATE_HZ)[0] if input is not None else MicSource(device))
            yield LiveAudio(answers, opened(Speaker(REALTIME_RATE_HZ, on_message=on_message, delay_ms=AV_DELAY_MS)),
                            user=user, answers=answers)
        elif input is not None:
            paced, known = _paced_file(input, None)
            source = opened(paced)
            speaker = opened(Speaker(source.rate_hz, on_message=on_message, delay_ms=AV_DELAY_MS))
            yield LiveAudio(source, speaker, end_sample=len(source.samples), known=known)
        else:
            yield LiveAudio(opened(MicSource(device)), None)


class AudioPump(Worker):
    """The audio thread: the source's blocks, in real time, onto the timeline, and FEED_AHEAD_MS of what
    the source already knows is coming (agent answers) to the service. Runs inside `with`; a failure
    (a microphone gone) is kept in `error` for the main thread."""

    def __init__(self, source: AudioSource, timeline: Timeline):
        self.source, self.timeline = source, timeline
        self.error: Exception | None = None
        self._ahead_samples = timeline.rate_hz * FEED_AHEAD_MS // 1000
        super().__init__("audio")

    def _run(self) -> None:
        last_block_s = time.monotonic()
        try:
            while not self._stop.is_set():
                got = self.source.read(READ_TIMEOUT_S)
                if got is None:
                    if time.monotonic() - last_block_s > SOURCE_SILENT_S:
                        raise DeviceError(f"the audio source gave nothing for {SOURCE_SILENT_S:.0f} s: "
                                          "is the microphone still connected? (see --list-devices)")
                    continue
                last_block_s = time.monotonic()
                block, captured_at_s = got
                self.timeline.play(block, captured_at_s)
                ahead = self.source.read_ahead(self.timeline.ahead_room(self._ahead_samples))
                self.timeline.feed_ahead(ahead, captured_at_s)
        except Exception as exc:  # handed to the main thread, which ends the session with it
            self.error = exc
