"""The live session's one audio clock: samples counted from the start of the session.

What was played (heard, recorded) and what the lip-sync service was fed are both positions on it.
They differ only in agent mode, where answers reach the service a little before they play; an
answer cut off by barge-in leaves a range that was fed but never played (a "cut"), whose mouths
must never show. No threads and no clock reads here: the audio thread calls `play`, `feed_ahead`
and `interrupt`, the frame scheduler reads `heard_sample` and `is_cut`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

# (samples, the position of their first sample on the timeline, when they were captured)
FeedFn = Callable[[np.ndarray, int, float], None]


class SoundOut(Protocol):
    """Where played sound is heard: the speakers, or nothing."""

    @property
    def delay_s(self) -> float:
        """How long a block queued now waits before it is heard."""

    def play(self, block: np.ndarray) -> None:
        """Queue one (n,) float32 block; never waits."""

    def flush(self) -> int:
        """Drop what is queued and not yet heard; returns how many samples were dropped."""


class NoSound:
    """No speakers (the microphone drives the avatar: playing it back would echo)."""

    delay_s = 0.0

    def play(self, block: np.ndarray) -> None:
        pass

    def flush(self) -> int:
        return 0


def _ignore(block: np.ndarray) -> None:
    pass


class Timeline:
    """What was played and what the service was fed, in samples at rate_hz.

    feed: hands samples to the lip-sync service (never waits). out: where sound is heard.
    on_played: every played block, in order (the recorder's sound).
    """

    def __init__(self, rate_hz: int, *, feed: FeedFn, out: SoundOut | None = None,
                 on_played: Callable[[np.ndarray], None] = _ignore):
        self.rate_hz = rate_hz
        self.out = out if out is not None else NoSound()
        self.played = 0  # samples played (or captured, for the microphone)
        self.fed = 0  # samples handed to the service
        self.cuts: list[tuple[int, int]] = []  # [start, end) sample ranges fed but never played
        self._feed, self._on_played = feed, on_played
        self._lock = threading.Lock()

    def play(self, block: np.ndarray, captured_at_s: float) -> None:
        """The next (n,) block of sound; what of it the service has not had yet goes to it now."""
        with self._lock:
            if self.fed < self.played + len(block):
                self._feed_locked(block[self.fed - self.played:], captured_at_s)
            self.out.play(block)
            self._on_played(block)
            self.played += len(block)

    def feed_ahead(self, samples: np.ndarray, captured_at_s: float) -> None:
        """Samples that will play after everything fed so far (agent answers, early)."""
        with self._lock:
            self._feed_locked(samples, captured_at_s)

    def ahead_room(self, ahead_samples: int) -> int:
        """How many more samples may be fed so that the service is `ahead_samples` ahead of the sound."""
        return max(0, self.played + ahead_samples - self.fed)

    def _feed_locked(self, samples: np.ndarray, captured_at_s: float) -> None:
        if len(samples):
            self._feed(samples, self.fed, captured_at_s)
            self.fed += len(samples)

    def interrupt(self, stop_answer: Callable[[], tuple[str | None, int]]) -> tuple[str | None, int]:
        """Silence the answer playing now: (its item, milliseconds of it heard) or (None, 0).

        stop_answer drops the answer at its source and says (item, samples of it read); what was
        fed but not played becomes a cut, and what waits in the speakers was not heard either.
        """
        with self._lock:
            item, read = stop_answer()
            if self.fed > self.played:
                self.cuts.append((self.played, self.fed))
            dropped = self.out.flush()
        return item, max(0, read - dropped) * 1000 // self.rate_hz

    def heard_sample(self) -> int:
        """The sample being heard about now: played, less what waits in the speakers."""
        return self.played - int(self.out.delay_s * self.rate_hz)

    def is_cut(self, start_sample: int) -> bool:
        """Whether the sound from start_sample on was fed to the service but never played."""
        return any(a <= start_sample < b for a, b in self.cuts)
