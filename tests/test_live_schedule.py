"""The live session's frame scheduling and audio timeline, without threads, devices or a wall clock.

A simulated clock advances in small steps; the service's mouths arrive at chosen moments, and the
scheduler is asked what to show at each step, as the session's main thread does.
"""

from __future__ import annotations

import math
import queue
import random
from fractions import Fraction

import numpy as np
import pytest

from lipsync_cli.core.driver import MouthParams
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.timing import first_sample_of_frame, frame_of_sample
from lipsync_cli.live.player import FramePlayer
from lipsync_cli.live.schedule import IDLE_LAG_FRAMES, MAX_BACKLOG_FRAMES, FrameSchedule, plan
from lipsync_cli.live.stream import Arrival
from lipsync_cli.live.timeline import Timeline

RATE_HZ = 16_000
FPS = Fraction(25)
STEP_S = 0.005  # the simulated clock's step (the main thread's poll step)
FRAME_SAMPLES = RATE_HZ // 25


def _mouth(index: int) -> MouthFrame:
    params = MouthParams(open=0.5, wide=0.0, round=0.0, closed=False, speech=True, shape="C")
    return MouthFrame(index=index, model_frame=index, image=np.full((32, 32, 3), 200, np.uint8),
                      bounds=np.array([10.0, 10.0, 42.0, 42.0]), params=params)


def _slot_at(t_s: float, delay_s: float = 0.0) -> int:
    """The slot heard at time t_s, with delay_s of sound waiting in the speakers."""
    return frame_of_sample(max(0, int(round((t_s - delay_s) * RATE_HZ))), fps=FPS, sample_rate_hz=RATE_HZ)


def _simulate(arrivals: dict[int, float], *, seconds: float, away=lambda t: False, delay_s: float = 0.0):
    """Run a FrameSchedule over a fake clock. arrivals: slot -> when its mouth arrives.

    Returns ([(time, slot, mouth or None)] shown, the schedule)."""
    schedule, shown = FrameSchedule(), []
    for step in range(int(seconds / STEP_S)):
        t = step * STEP_S
        for slot, at in arrivals.items():
            if t - STEP_S < at <= t:
                schedule.add(slot, _mouth(slot))
        decided = schedule.take(heard_slot=_slot_at(t, delay_s), away=away(t))
        if decided.slot is not None:
            shown.append((t, decided.slot, decided.mouth))
    return shown, schedule


def _check_order(shown, schedule) -> None:
    slots = [slot for _, slot, _ in shown]
    assert slots == sorted(set(slots)), "a slot shown twice or out of order"
    for _, slot, mouth in shown:
        assert mouth is None or mouth.index == slot


def test_mouths_in_time_show_when_their_sound_plays():
    # each mouth arrives 60 ms before its sound is heard (speakers 80 ms behind the capture)
    arrivals = {s: s / 25 + 0.02 for s in range(50)}
    shown, schedule = _simulate(arrivals, seconds=2.2, delay_s=0.08)
    _check_order(shown, schedule)
    assert [slot for _, slot, _ in shown] == list(range(50))
    assert all(mouth is not None for _, _, mouth in shown)
    for t, slot, _ in shown[1:]:  # (slot 0 is heard from the start: it shows when it arrives)
        # shown at the first step where its sound is heard, not before
        assert _slot_at(t, 0.08) == slot and _slot_at(t - STEP_S, 0.08) < slot, (t, slot)
    assert schedule.dropped == 0


def test_a_backlog_beyond_the_limit_drops_the_oldest():
    # slots 0..9 all arrive at once, when slot 12 is already being heard
    late_s = 12 / 25 + 0.001
    shown, schedule = _simulate({s: late_s for s in range(10)}, seconds=0.6)
    _check_order(shown, schedule)
    assert [slot for _, slot, _ in shown] == list(range(10 - MAX_BACKLOG_FRAMES, 10))
    assert schedule.dropped == 10 - MAX_BACKLOG_FRAMES
    # the backlog is shown at once, one frame per step, oldest first
    arrived_s = math.ceil(late_s / STEP_S) * STEP_S  # the first step at or after the arrival
    assert [t for t, _, _ in shown] == pytest.approx([arrived_s + STEP_S * k for k in range(MAX_BACKLOG_FRAMES)])


def test_plan_drops_oldest_first_and_what_is_behind_the_shown():
    pending = {s: _mouth(s) for s in (2, 3, 5, 6, 7, 8, 9, 20)}
    decided = plan(pending, heard_slot=10, next_slot=4, away=False)
    assert decided.dropped == (2, 3, 5, 6)  # 2, 3 behind what was shown; 5, 6 past the backlog
    assert decided.slot == 7 and decided.mouth is pending[7]
    assert plan({20: _mouth(20)}, heard_slot=10, next_slot=4, away=False).slot is None  # not due yet


def test_idle_frames_while_the_service_is_away_then_its_mouths_again():
    away_until_s = 1.0
    # the service comes back at 1 s with mouths 6 frames behind the sound (its first ones are too late)
    arrivals = {s: max(away_until_s, (s + 6) / 25) for s in range(10, 50)}
    shown, schedule = _simulate(arrivals, seconds=2.5, away=lambda t: t < away_until_s)
    _check_order(shown, schedule)
    idle = [(t, slot) for t, slot, mouth in shown if mouth is None]
    assert len(idle) >= 20
    for t, slot in idle:
        assert slot == _slot_at(t) - IDLE_LAG_FRAMES  # the avatar's own frames, just behind the sound
    served = [slot for _, slot, mouth in shown if mouth is not None]
    assert served and min(served) > max(slot for _, slot in idle)
    assert served[-1] == 49 and schedule.dropped >= 1
    # no idle frame while the service streams
    assert all(t < away_until_s + STEP_S for t, _ in idle)


def test_random_arrivals_never_show_a_slot_twice_or_out_of_order():
    rng = random.Random(7)
    for trial in range(20):
        arrivals = {s: max(0.0, s / 25 + rng.uniform(-0.1, 0.4)) for s in range(60) if rng.random() > 0.1}
        gaps = sorted(rng.uniform(0, 3) for _ in range(4))
        shown, schedule = _simulate(arrivals, seconds=3.5,
                                    away=lambda t: gaps[0] < t < gaps[1] or gaps[2] < t < gaps[3])
        _check_order(shown, schedule)
        served = {slot for _, slot, mouth in shown if mouth is not None}
        assert len(served) + schedule.dropped + len(schedule.pending) == len(arrivals), trial


class _FakeOut:
    def __init__(self):
        self.delay_s, self.blocks = 0.0, []

    def play(self, block):
        self.blocks.append(block)
        self.delay_s += len(block) / RATE_HZ

    def flush(self):
        dropped = sum(len(b) for b in self.blocks)
        self.blocks, self.delay_s = [], 0.0
        return dropped


def _timeline():
    fed, played, out = [], [], _FakeOut()
    timeline = Timeline(RATE_HZ, feed=lambda samples, start, at: fed.append((start, len(samples), at)), out=out,
                        on_played=played.append)
    return timeline, fed, played, out


def test_timeline_feeds_what_plays_once_and_counts_what_is_heard():
    timeline, fed, played, out = _timeline()
    block = np.ones(320, np.float32)
    timeline.play(block, 1.0)
    timeline.play(block, 1.02)
    assert (timeline.played, timeline.fed) == (640, 640)
    assert fed == [(0, 320, 1.0), (320, 320, 1.02)] and len(played) == 2
    # 640 samples wait in the speakers: the sound heard is still at 0
    assert timeline.heard_sample() == 0
    out.blocks, out.delay_s = out.blocks[1:], 320 / RATE_HZ
    assert timeline.heard_sample() == 320


def test_timeline_feeds_ahead_and_a_cut_leaves_what_never_played():
    timeline, fed, played, out = _timeline()
    timeline.feed_ahead(np.ones(800, np.float32), 2.0)  # an answer, early
    assert timeline.ahead_room(1000) == 200
    timeline.play(np.ones(320, np.float32), 2.1)  # its start plays: already fed, not again
    assert fed == [(0, 800, 2.0)] and (timeline.played, timeline.fed) == (320, 800)
    item, heard_ms = timeline.interrupt(lambda: ("answer1", 320))
    # 320 samples read from the answer, all still in the speakers: none was heard, none is mouthed
    assert (item, heard_ms) == ("answer1", 0)
    assert timeline.cuts == [(0, 800)]
    assert timeline.is_cut(0) and timeline.is_cut(799) and not timeline.is_cut(800)
    # what plays next (silence kept in place of the fed part) is not fed again
    timeline.play(np.zeros(480, np.float32), 2.2)
    timeline.play(np.zeros(320, np.float32), 2.3)
    assert fed[-1] == (800, 320, 2.3) and timeline.fed == timeline.played == 1120


def test_timeline_tells_when_each_sample_is_heard():
    timeline, fed, played, out = _timeline()
    assert timeline.heard_at_s(0) is None  # nothing played yet
    out.play = lambda block: None  # no speakers: heard when captured
    timeline.play(np.ones(320, np.float32), 10.0)  # its last sample captured at 10.0 s
    timeline.play(np.ones(320, np.float32), 10.02)
    assert timeline.heard_at_s(319) == pytest.approx(10.0)
    assert timeline.heard_at_s(0) == pytest.approx(10.0 - 319 / RATE_HZ)
    assert timeline.heard_at_s(480) == pytest.approx(10.02 - 159 / RATE_HZ)
    assert timeline.heard_at_s(800) == pytest.approx(10.02 + 161 / RATE_HZ)  # not played yet: at this pace
    out.delay_s = 0.1  # speakers 100 ms behind: the next block is heard that much after it is played
    timeline.play(np.ones(320, np.float32), 10.04)
    assert timeline.heard_at_s(959) == pytest.approx(10.14)


def test_a_barge_in_silences_what_the_speakers_had_not_played():
    unheard = []
    timeline = Timeline(RATE_HZ, feed=lambda samples, start, at: None, out=_FakeOut(), on_unheard=unheard.append)
    timeline.play(np.ones(320, np.float32), 1.0)
    timeline.out.blocks, timeline.out.delay_s = [], 0.0  # the speakers played it
    timeline.play(np.ones(320, np.float32), 1.02)  # still waiting in the speakers
    assert timeline.interrupt(lambda: ("a", 640)) == ("a", 320 * 1000 // RATE_HZ)
    assert unheard == [320] and timeline.cuts == [(320, 640)]


class _FakeModel:
    n_frames, fps, width, height = 10, FPS, 64, 64

    def frame(self, index):
        return np.zeros((64, 64, 3), np.uint8)

    def region(self, index):
        return None


class _FakeLip:
    def __init__(self):
        self.frames = queue.Queue()

    def away(self, now_s):
        return False


class _FakeSink:
    def __init__(self):
        self.shown = []

    def show(self, frame, slot, overlay):
        self.shown.append((slot, overlay.idle, int(frame.max())))
        return True

    def poll(self):
        return True


def test_mouths_of_a_cut_answer_are_never_shown():
    timeline, fed, played, out = _timeline()
    out.play, out.flush = (lambda block: None), (lambda: 0)  # speakers without delay
    lip, sink = _FakeLip(), _FakeSink()
    player = FramePlayer(_FakeModel(), timeline, lip, sink, status=str, caption=str, started_s=0.0)
    timeline.feed_ahead(np.ones(6 * FRAME_SAMPLES, np.float32), 0.0)  # an answer of 6 frames, fed early
    timeline.play(np.ones(2 * FRAME_SAMPLES, np.float32), 0.0)  # frames 0 and 1 play
    timeline.interrupt(lambda: ("a", 2 * FRAME_SAMPLES))  # barge-in: frames 2..5 never play
    for s in range(6):
        lip.frames.put(Arrival(s, _mouth(s), 0.0))
    for _ in range(6):  # one frame shown a step, oldest first
        assert player.step()
        timeline.play(np.zeros(FRAME_SAMPLES, np.float32), 0.0)  # silence in the answer's place
    assert [slot for slot, _, _ in sink.shown] == list(range(6))
    assert [idle for _, idle, _ in sink.shown] == [False, False, True, True, True, True]
    assert [bright > 0 for _, _, bright in sink.shown] == [True, True, False, False, False, False]
    assert first_sample_of_frame(2, fps=FPS, sample_rate_hz=RATE_HZ) == timeline.cuts[0][0]


def test_the_windows_fps_is_the_rate_from_the_first_frames_on(monkeypatch):
    import lipsync_cli.live.player as player_module

    clock = [100.0]
    monkeypatch.setattr(player_module, "time", type("Clock", (), {"monotonic": staticmethod(lambda: clock[0])}))
    timeline, fed, played, out = _timeline()
    out.play, out.flush = (lambda block: None), (lambda: 0)
    lip, sink = _FakeLip(), _FakeSink()
    rates = []
    sink.show = lambda frame, slot, overlay: rates.append(overlay.fps) or True
    player = FramePlayer(_FakeModel(), timeline, lip, sink, status=str, caption=str, started_s=clock[0])
    for s in range(30):
        lip.frames.put(Arrival(s, _mouth(s), clock[0]))
        timeline.play(np.ones(FRAME_SAMPLES, np.float32), clock[0])
        assert player.step()
        clock[0] += 1 / float(FPS)
    assert len(rates) == 30 and rates[0] == 0.0
    # 25 frames a second from the second frame on, in the first second as after it
    assert rates[1:] == pytest.approx([25.0] * 29, rel=1e-6)
