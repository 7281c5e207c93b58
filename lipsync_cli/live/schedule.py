"""Which frame a live session shows next: a pure decision, apart from threads and clocks.

Output frame `g` (a "slot") shows the audio from `first_sample_of_frame(g)` on. The service's
mouth for a slot waits until that slot's sound is heard, then shows (at once when it came late).
A small backlog is shown oldest first to catch up; past MAX_BACKLOG_FRAMES the oldest are dropped.
While the service is away (not streaming, or silent for a while) the avatar's own frame shows,
IDLE_LAG_FRAMES behind the sound, about where the service's frames would have been. Slots only go
forward: nothing shows twice or out of order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lipsync_cli.core.engine import MouthFrame

MAX_BACKLOG_FRAMES = 3  # more frames than this due at once: the oldest are dropped
IDLE_LAG_FRAMES = 4  # without the service, idle frames trail the sound by this much (its usual delay)


@dataclass(frozen=True)
class Plan:
    """What to do now."""

    slot: int | None  # the slot to show now; None: nothing yet
    mouth: MouthFrame | None  # its mouth; None: the avatar's own frame (idle, or its answer was cut off)
    dropped: tuple[int, ...]  # pending slots to forget without showing them, oldest first


def plan(pending: Mapping[int, MouthFrame | None], *, heard_slot: int, next_slot: int, away: bool) -> Plan:
    """The next frame to show.

    pending: slot -> its mouth from the service (None: show the avatar's own frame in that slot).
    heard_slot: the slot whose sound is being heard now. next_slot: the first slot not shown yet
    (everything before it is history). away: the service gives nothing now; idle frames fill in.
    """
    due = sorted(s for s in pending if s <= heard_slot)
    late = [s for s in due if s < next_slot]
    on_time = [s for s in due if s >= next_slot]
    dropped = tuple(sorted(late + on_time[:-MAX_BACKLOG_FRAMES]))
    on_time = on_time[-MAX_BACKLOG_FRAMES:]
    if on_time:
        return Plan(on_time[0], pending[on_time[0]], dropped)
    idle_slot = heard_slot - IDLE_LAG_FRAMES
    if away and idle_slot >= next_slot and idle_slot not in pending:
        return Plan(idle_slot, None, dropped)
    return Plan(None, None, dropped)


class FrameSchedule:
    """The pending mouths of a session and the slots shown so far, driven by `plan` (no threads, no clock)."""

    def __init__(self) -> None:
        self.pending: dict[int, MouthFrame | None] = {}
        self.next_slot = 0  # every slot before this was shown or dropped
        self.dropped = 0  # mouths forgotten without being shown

    def add(self, slot: int, mouth: MouthFrame | None) -> None:
        """The service's mouth for `slot` (None: the slot's sound was cut off, show the avatar's own frame)."""
        self.pending[slot] = mouth

    def has_due(self, heard_slot: int) -> bool:
        """Whether a pending mouth is already due (then nobody should wait for more)."""
        return any(s <= heard_slot for s in self.pending)

    def take(self, *, heard_slot: int, away: bool) -> Plan:
        """`plan` for now, applied: the slot to show (if any) and the dropped ones leave the pending set."""
        decided = plan(self.pending, heard_slot=heard_slot, next_slot=self.next_slot, away=away)
        for s in decided.dropped:
            del self.pending[s]
        self.dropped += len(decided.dropped)
        if decided.slot is not None:
            self.pending.pop(decided.slot, None)
            self.next_slot = decided.slot + 1
        return decided
