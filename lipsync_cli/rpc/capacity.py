"""How many streams a server is serving, against the most it takes at once.

One `Capacity` per process: the gRPC services (and any other stream endpoint of `serve`) take a
slot for each stream or clip they serve and give it back when it ends. A call that finds every
slot taken is refused at once rather than queued behind streams that may last an hour.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from lipsync_cli.errors import ServiceFullError
from lipsync_cli.rpc.limits import default_max_streams, full_message


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
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def state(self) -> CapacityState:
        with self._lock:
            return CapacityState(self._in_use, self.limit)

    def try_acquire(self) -> bool:
        """Take a slot if one is free; False (nothing taken) when all are busy."""
        with self._lock:
            if self._in_use >= self.limit:
                return False
            self._in_use += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._in_use <= 0:
                raise RuntimeError("a stream slot was given back that was never taken")
            self._in_use -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block; ServiceFullError (FULL_MESSAGE) at once when none is free."""
        if not self.try_acquire():
            raise ServiceFullError(full_message(self.limit, self.limit))
        try:
            yield
        finally:
            self.release()
