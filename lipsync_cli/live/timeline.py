"""The live session's one audio clock: samples counted from the start of the session.

What was played (heard, recorded) and what the lip-sync service was fed are both positions on it.
They differ only in agent mode, where answers reach the service a little before they play; an
answer cut off by barge-in leaves a range that was fed but never played (a "cut"), whose mouths
must never show. No threads and no clock reads here: the audio thread calls `play`, `feed_ahead`
and `interrupt`, the frame scheduler reads `heard_sample` and `is_cut`, and `heard_at_s` tells when
a sample was heard (the microphone: when it entered it; speakers: when they play it), for the
honest sound->screen latency.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
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


HEARD_HISTORY_BLOCKS = 500  # when the last this many played blocks were heard (10 s of CHUNK_MS blocks)


def _ignore(block: np.ndarray) -> None:
    pass


class Timeline:
    """What was played and what the service was fed, in samples at rate_hz.

    feed: hands samples to the lip-sync service (never waits). out: where sound is heard.
    on_played: every played block, in order (the recorder's sound). on_unheard(n): the last n samples
    played were dropped from the speakers before anyone heard them (a barge-in).
    """

    def __init__(self, rate_hz: int, *, feed: FeedFn, out: SoundOut | None = None,
                 on_played: Callable[[np.ndarray], None] = _ignore, on_unheard: Callable[[int], None] = _ignore):
        self.rate_hz = rate_hz
        self.out = out if out is not None else NoSound()
        self.played = 0  # samples played (or captured, for the microphone)
        self.fed = 0  # samples handed to the service
        self.cuts: list[tuple[int, int]] = []  # [start, end) sample ranges fed but never played
        self._feed, self._on_played, self._on_unheard = feed, on_played, on_unheard
        self._lock = threading.Lock()
        # per played block: (the timeline position after it, time.monotonic() when its last sample is heard)
        self._heard: deque[tuple[int, float]] = deque(maxlen=HEARD_HISTORY_BLOCKS)

    def play(self, block: np.ndarray, captured_at_s: float) -> None:
        """The next (n,) block of sound, its last sample captured at captured_at_s (time.monotonic());
        what of it the service has not had yet goes to it now."""
        with self._lock:
            if self.fed < self.played + len(block):
                self._feed_locked(block[self.fed - self.played:], captured_at_s)
            # heard when what waits in the speakers before it has played (`heard_sample`'s model)
            heard_s = captured_at_s + self.out.delay_s
            self.out.play(block)
            self._on_played(block)
            self.played += len(block)
            self._heard.append((self.played, heard_s))

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

        stop_answer drops the answer at its source and says (item, samples of it read); what waits in
        the speakers is dropped too, and from there on, whatever was fed is a cut: never heard, so
        never mouthed (nor recorded).
        """
        with self._lock:
            item, read = stop_answer()
            dropped = self.out.flush()
            unheard_from = max(0, self.played - dropped)
            if self.fed > unheard_from:
                self.cuts.append((unheard_from, self.fed))
            if dropped:
                self._on_unheard(dropped)
        return item, max(0, read - dropped) * 1000 // self.rate_hz

    def heard_sample(self) -> int:
        """The sample being heard about now: played, less what waits in the speakers."""
        return self.played - int(self.out.delay_s * self.rate_hz)

    def heard_at_s(self, sample: int) -> float | None:
        """time.monotonic() when timeline sample `sample` was (or will be) heard: captured by the microphone,
        or played by the speakers; None when it is older than the history kept, or nothing played yet."""
        with self._lock:
            if not self._heard or sample < self._heard[0][0] - self.rate_hz:
                return None
            k = min(bisect.bisect_right(self._heard, (sample, float("inf"))), len(self._heard) - 1)
            end, heard_s = self._heard[k]
        return heard_s - (end - 1 - sample) / self.rate_hz

    def is_cut(self, start_sample: int) -> bool:
        """Whether the sound from start_sample on was fed to the service but never played."""
        return any(a <= start_sample < b for a, b in self.cuts)
