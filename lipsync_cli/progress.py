"""Progress reporting from the core, without printing.

Long work takes a `progress` callback: `progress(stage, done, total)`. The CLI passes one that
drives a rich progress bar; tests and libraries pass nothing.
"""

from typing import Callable, Optional

# stage name ("decoding", "tracking", "writing", "rendering"), units done, units in all (0 = unknown)
ProgressFn = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default callback: report nothing."""


def report(progress: Optional[ProgressFn]) -> ProgressFn:
    """The callback to call: the given one, or one that does nothing."""
    return progress or no_progress
