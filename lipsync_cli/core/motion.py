"""Lips with mass: one mouth parameter followed frame by frame with bounded speed and acceleration.

The frame smoother (core/driver.py) keeps one `Follower` per parameter (open, wide, round); a
`Motion` says how fast they may move: LIVE_MOTION for the live driver's spectral targets,
PHONETIC_MOTION, slower, for the render driver's phone targets.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Motion(NamedTuple):
    """How fast the lips may move (the follower's settings)."""

    natural_hz: float  # the critically damped follower's natural frequency (syllables come at 3-6 Hz)
    max_speed_per_s: float  # full ranges per second, for open, wide and round
    max_accel_per_s2: float  # full ranges per second squared


# live (spectral targets): 0.16 of the range per 25 fps frame at most, which keeps the 95th
# percentile step near a quarter of the range (people filmed talking: 0.20-0.35)
LIVE_MOTION = Motion(natural_hz=7.0, max_speed_per_s=4.0, max_accel_per_s2=200.0)
# render (phone targets, which jump from phone to phone): slower, 0.1 of the range per 25 fps frame,
# so that the rendered lip gap's 95th percentile step stays under a third of its range
PHONETIC_MOTION = Motion(natural_hz=5.0, max_speed_per_s=2.5, max_accel_per_s2=100.0)
SHUT_TARGET = 0.1  # a target under this means lips together (hops.CLOSED_BELOW_OPEN): the follower then
LIPS_PRESS = 0.1  # aims this far past touching, so it gets there in finite time instead of creeping to 0


class Follower:
    """A critically damped second-order follower of one mouth parameter, one step per video frame.

    Two equal first-order lags in a row (a double pole at exp(-2 pi natural_hz / fps)): the
    response to a jump of the target builds up speed, never overshoots, and settles in about
    1 / natural_hz. On top, the step per frame is kept within max_step, the change of step within
    max_accel, and the speed toward the target within what max_accel can stop before it, so
    neither speed nor acceleration exceeds a lip's whatever the targets do. The value stays in
    0..1; a target under SHUT_TARGET is aimed LIPS_PRESS past 0, and reaching 0 stops it there
    (lips meeting stop each other: the one place the acceleration limit gives way).
    """

    def __init__(self, *, pole: float, max_step: float, max_accel: float) -> None:
        self.pole, self.max_step, self.max_accel = pole, max_step, max_accel
        self.intent = self.value = self.step = 0.0  # first lag, output, last step

    def follow(self, target: float, *, brake: bool = False) -> float:
        """One frame toward target; brake: the acceleration limit is lifted (lips about to shut)."""
        if target < SHUT_TARGET:
            target = -LIPS_PRESS
        self.intent = self.pole * self.intent + (1 - self.pole) * target
        wanted = self.pole * self.value + (1 - self.pole) * self.intent - self.value
        if not brake:
            # no faster toward the target than lets it stop there at max_accel, then the acceleration limit
            reach = math.sqrt(2 * self.max_accel * abs(target - self.value))
            wanted = min(max(wanted, -reach), reach)
            wanted = min(max(wanted, self.step - self.max_accel), self.step + self.max_accel)
        self.step = min(max(wanted, -self.max_step), self.max_step)
        value = self.value + self.step
        if not 0.0 <= value <= 1.0:  # the lips meet (or the jaw is at its widest): they stop there
            value = min(max(value, 0.0), 1.0)
            self.step = value - self.value
            self.intent = min(max(self.intent, 0.0), 1.0)
        self.value = value
        return self.value

    def stop_at(self, value: float) -> None:
        """Put the parameter at `value`, at rest (a closure, silence)."""
        self.intent = self.value = value
        self.step = 0.0
