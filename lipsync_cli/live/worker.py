"""A background thread that lives for the span of a `with` block."""

from __future__ import annotations

import threading
from typing import Self

JOIN_TIMEOUT_S = 5.0  # a thread that does not end by then is left to die with the process (it is a daemon)


class Worker:
    """Runs `_run` on a daemon thread from `__enter__` to `__exit__`; `_run` returns once `_stop` is set.

    Subclasses whose thread may wait on something else than `_stop` wake it in `_wake`.
    """

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=JOIN_TIMEOUT_S)

    def _wake(self) -> None:
        """Wake the thread if it may be waiting on something other than `_stop` (nothing by default)."""

    def _run(self) -> None:
        raise NotImplementedError
