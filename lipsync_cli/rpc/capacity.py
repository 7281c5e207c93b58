"""How many streams a server is serving, against the most it takes at once.

One `Capacity` per process: the gRPC services (and any other stream endpoint of `serve`) take a
slot for each stream or clip they serve and give it back when it ends. A call that finds every
slot taken is refused at once rather than queued behind streams that may last an hour.

Draining (`serve` on SIGTERM): `drain()` refuses every new stream from then on, running ones keep
their slots; `wait_idle` waits for them to end; `stop_streams()` tells those still running at the
drain deadline to stop (the services check `stopping` between frames). Readiness (HTTP `/readyz`,
gRPC health) reads `accepting()` and follows `on_change`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, NamedTuple

from lipsync_cli import metrics
from lipsync_cli.errors import ServiceFullError
from lipsync_cli.rpc.limits import default_max_streams, draining_message, full_message


class CapacityState(NamedTuple):
    """A snapshot for readiness checks and logs."""

    in_use: int  # streams being served now
    limit: int  # the most served at once


class Capacity:
    """At most `limit` slots in use at once (default: `limits.default_max_streams()`); thread-safe."""

    def __init__(self, limit: int | None = None):
        limit = default_max_streams() if limit is None else limit
        if limit < 1:
            raise ValueError(f"a server must take at least one stream, not {limit}")
        self.limit = limit
        self._in_use = 0
        self._draining = False
        self._stopping = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def draining(self) -> bool:
        """True once `drain()` was called: no new stream is taken."""
        return self._draining

    @property
    def stopping(self) -> bool:
        """True once `stop_streams()` was called: running streams should stop at their next frame."""
        return self._stopping.is_set()

    def state(self) -> CapacityState:
        with self._changed:
            return CapacityState(self._in_use, self.limit)

    def accepting(self) -> bool:
        """Whether a new stream would be taken now: not draining and a slot free."""
        with self._changed:
            return not self._draining and self._in_use < self.limit

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change of `accepting()`'s inputs (in the changing thread; keep it quick)."""
        self._listeners.append(listener)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and the server is not draining; False (nothing taken) otherwise."""
        with self._changed:
            if self._draining or self._in_use >= self.limit:
                metrics.STREAMS_REFUSED.labels(metrics.REFUSED_DRAINING if self._draining
                                               else metrics.REFUSED_FULL).inc()
                return False
            self._in_use += 1
        metrics.STREAMS_OPEN.inc()
        self._notify()
        return True

    def release(self) -> None:
        with self._changed:
            if self._in_use <= 0:
                raise RuntimeError("a stream slot was given back that was never taken")
            self._in_use -= 1
            self._changed.notify_all()
        metrics.STREAMS_OPEN.dec()
        self._notify()

    def refusal(self) -> ServiceFullError:
        """The error of a refused `try_acquire`: draining or full (ServiceFullError either way)."""
        if self._draining:
            return ServiceFullError(draining_message())
        return ServiceFullError(full_message(*self.state()))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block; `refusal()` at once when none is free or the server is draining."""
        if not self.try_acquire():
            raise self.refusal()
        try:
            yield
        finally:
            self.release()

    def drain(self) -> None:
        """Take no new stream from now on (running ones keep their slots)."""
        with self._changed:
            self._draining = True
        self._notify()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no slot is held, at most timeout_s; True if none is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_use == 0, timeout=timeout_s)

    def stop_streams(self) -> None:
        """Ask the streams still running to stop at their next frame (the drain deadline has come)."""
        self._stopping.set()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
