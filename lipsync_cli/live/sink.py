"""Where a live session's shown frames go: the window, the --record MP4, a caller's callback.

Each is a `FrameSink`; `Sinks` puts any number of them behind the same protocol, so the frame
scheduler shows a frame once and never asks which of them exist.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from lipsync_cli.core.timing import first_sample_of_frame
from lipsync_cli.live.window import LiveWindow, Overlay
from lipsync_cli.media.store import Model
from lipsync_cli.media.video import Mp4Writer

FrameFn = Callable[[np.ndarray, int, bool], None]  # (composited BGR frame, slot, from the service)


class FrameSink(Protocol):
    def show(self, frame: np.ndarray, slot: int, overlay: Overlay) -> bool:
        """Take the (H, W, 3) BGR frame shown for `slot` (slots only increase); False: the user asked to stop."""

    def poll(self) -> bool:
        """Between frames: handle events; False when the user asked to stop."""

    def close(self, ok: bool) -> None:
        """The session is over; ok=False: it failed, keep nothing half-done."""


class WindowSink:
    """The OpenCV window, with the overlay drawn on it."""

    def __init__(self, model: Model):
        self.window = LiveWindow(model.width, model.height)

    def show(self, frame: np.ndarray, slot: int, overlay: Overlay) -> bool:
        return self.window.show(frame, overlay)

    def poll(self) -> bool:
        return self.window.poll()

    def close(self, ok: bool) -> None:
        self.window.close()


class CallbackSink:
    """Hands every frame to on_frame(frame, slot, from_service) (tests and benchmarks)."""

    def __init__(self, on_frame: FrameFn):
        self.on_frame = on_frame

    def show(self, frame: np.ndarray, slot: int, overlay: Overlay) -> bool:
        self.on_frame(frame, slot, not overlay.idle)
        return True

    def poll(self) -> bool:
        return True

    def close(self, ok: bool) -> None:
        pass


class Recorder:
    """--record: frame `slot` at position `place(slot)` of the MP4 (repeated over positions nothing was
    shown at), with the sound as it was played, sample 0 at time 0. `place` is the identity (each
    mouth on its sound: the sound waited for it) unless the session sets it: with a microphone, the
    slot being captured when the frame was shown, so the recording shows the mouth as late as the
    viewer saw it.

    `add_audio` takes the played blocks from the audio thread, `unheard` the samples dropped from the
    speakers before they were heard (they are written as silence); the audio is written with the
    frames, up to the end of the last frame written (the sound heard so far: the rest may still be cut).
    """

    def __init__(self, path: Path, model: Model, rate_hz: int):
        self.fps, self.rate_hz = model.fps, rate_hz
        self.writer = Mp4Writer(path, fps=model.fps, width=model.width, height=model.height,
                                audio_rate_hz=rate_hz, audio_channels=1)
        self._played: queue.SimpleQueue[np.ndarray | int] = queue.SimpleQueue()  # int n: `unheard(n)`
        self._audio = np.zeros(0, np.float32)  # played, not written yet
        self._audio_written = 0
        self.place: Callable[[int], int] = lambda slot: slot  # where in the MP4 the frame shown for a slot goes

    def add_audio(self, block: np.ndarray) -> None:
        """The next (n,) float32 block of played sound (any thread; never waits)."""
        self._played.put(block)

    def unheard(self, n: int) -> None:
        """The last n samples given to `add_audio` were never heard: they are recorded as silence (any thread)."""
        self._played.put(n)

    def show(self, frame: np.ndarray, slot: int, overlay: Overlay) -> bool:
        position = self.place(slot)
        while self.writer.frames_written <= position:
            self.writer.write_frame(frame)
        self._write_audio(pad=False)
        return True

    def poll(self) -> bool:
        return True

    def _write_audio(self, *, pad: bool) -> None:
        while not self._played.empty():
            got = self._played.get()
            if isinstance(got, int):  # silence the last `got` samples that are not written yet
                self._audio[max(0, len(self._audio) - got):] = 0.0
            else:
                self._audio = np.concatenate([self._audio, got])
        end = first_sample_of_frame(self.writer.frames_written, fps=self.fps, sample_rate_hz=self.rate_hz)
        n = end - self._audio_written
        if pad and len(self._audio) < n:
            self._audio = np.concatenate([self._audio, np.zeros(n - len(self._audio), np.float32)])
        n = min(n, len(self._audio))
        self.writer.write_audio(self._audio[:n])
        self._audio, self._audio_written = self._audio[n:], self._audio_written + n

    def close(self, ok: bool) -> None:
        """ok: the sound up to the end of the last frame (silence where none was played), then the file;
        otherwise the partial file is dropped."""
        if not ok:
            self.writer.abort()
            return
        self._write_audio(pad=True)
        self.writer.close()


class Sinks:
    """Several sinks as one: each frame goes to every one, in order; closed in reverse."""

    def __init__(self, sinks: Sequence[FrameSink]):
        self.sinks = list(sinks)

    def show(self, frame: np.ndarray, slot: int, overlay: Overlay) -> bool:
        return all([sink.show(frame, slot, overlay) for sink in self.sinks])  # a list: every sink sees it

    def poll(self) -> bool:
        return all([sink.poll() for sink in self.sinks])

    def close(self, ok: bool) -> None:
        """Every sink closes, even when one fails (the first failure is raised after)."""
        failures = []
        for sink in reversed(self.sinks):
            try:
                sink.close(ok)
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
