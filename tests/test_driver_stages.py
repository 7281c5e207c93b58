"""The mouth driver's stages one at a time, on synthetic inputs: hop analysis, speech gate, hop
targets, frame smoother (tests/test_driver.py checks the whole chain on real speech)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipsync_cli.core.driver import (
    AHEAD_MS,
    HOLD_MS,
    REST,
    FrameSmoother,
    MouthParams,
    frame_hops,
)
from lipsync_cli.core.motion import LIVE_MOTION, PHONETIC_MOTION, Follower, Motion
from lipsync_cli.core.hops import (
    FAINT_BELOW_LEVEL_DB,
    HANGOVER_MS,
    HOP_MS,
    LIPS_APART_OPEN,
    LIPS_APART_WITHIN_DB,
    MIN_SPEECH_RUN_MS,
    SILENT_TARGET,
    Hop,
    HopAnalyser,
    HopSeries,
    HopTarget,
    SpeechGate,
    TargetTracker,
)
from lipsync_cli.media.audio import SAMPLE_RATE_HZ

MIN_RUN_HOPS = MIN_SPEECH_RUN_MS // HOP_MS
HANGOVER_HOPS = HANGOVER_MS // HOP_MS
HOP = SAMPLE_RATE_HZ * HOP_MS // 1000  # samples
QUIET_DB, LOUD_DB = -70.0, -20.0


def tone(n_samples: int, *, freq_hz: float = 200.0, dbfs: float = -20.0) -> np.ndarray:
    """(n,) float32: a voice-like buzz (a fundamental and its harmonics up to 4 kHz) at about this level."""
    t = np.arange(n_samples) / SAMPLE_RATE_HZ
    x = sum(np.sin(2 * np.pi * freq_hz * k * t) / k for k in range(1, int(4000 / freq_hz)))
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (dbfs / 20)).astype(np.float32)


def noise(n_samples: int, *, dbfs: float = -60.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 10 ** (dbfs / 20), n_samples).astype(np.float32)


# --- hop analysis ---------------------------------------------------------------------------

def test_hop_measures_are_the_same_in_any_chunks():
    samples = np.concatenate([noise(3000), tone(5000), noise(2000)])
    whole = HopAnalyser(SAMPLE_RATE_HZ).feed(samples)
    analyser, parts, i = HopAnalyser(SAMPLE_RATE_HZ), [], 0
    for n in [1, 159, 161, 0, 400, 37] * 100:
        parts += list(analyser.feed(samples[i:i + n]))
        i += n
    assert len(whole) == len(parts) > 55  # 10 000 samples: 62 hops, less the last window
    assert list(whole) == parts  # Hop records, field by field


def test_bands_hold_what_they_are_named_for():
    vowel = HopAnalyser(SAMPLE_RATE_HZ).feed(
        (np.sin(2 * np.pi * 700 * np.arange(8000) / SAMPLE_RATE_HZ) * 0.1).astype(np.float32))
    hiss = HopAnalyser(SAMPLE_RATE_HZ).feed(np.diff(noise(8001, dbfs=-20)))  # tilted to the highs
    mid = slice(5, -5)
    assert np.all(vowel.total_db[mid] - vowel.f1_db[mid] < 0.5)  # a 700 Hz tone sits in the F1 band
    assert np.all(vowel.total_db[mid] - vowel.high_db[mid] > 40)
    assert np.all(hiss.total_db[mid] - hiss.high_db[mid] < 6)
    assert np.all(np.abs(vowel.all_centroid_hz[mid] - 700) < 50)


def test_a_hop_series_refuses_hops_it_does_not_hold():
    series: HopSeries[int] = HopSeries(first=-2, values=[7, 8])
    series.append(9)
    assert (series[-2], series[0], series.end) == (7, 9, 1)
    series.forget_before(0)
    assert series[0] == 9
    for hop in (-1, 1):
        with pytest.raises(IndexError):
            series[hop]


# --- stage 1: speech gate -------------------------------------------------------------------

def gate_speech(levels_db: list[float]) -> list[bool]:
    """Push hop levels (dB) through a gate; whether speech is on at each settled hop."""
    gate = SpeechGate()
    for db in levels_db:
        gate.push(db)
    settled = gate.settled_through(len(levels_db) - 1)
    return [gate.speech_on(hop) for hop in range(settled + 1)]


def test_gate_opens_on_a_tone_burst_and_not_on_a_click():
    burst_hops, click_hops = 30, MIN_RUN_HOPS - 2  # the click: 20 ms, half a speech run
    samples = np.concatenate([noise(100 * HOP), noise(burst_hops * HOP) + tone(burst_hops * HOP), noise(100 * HOP, seed=1),
                              noise(click_hops * HOP, seed=2) + tone(click_hops * HOP), noise(100 * HOP, seed=3)])
    gate = SpeechGate()
    loud = [gate.push(hop.hop_db) for hop in HopAnalyser(SAMPLE_RATE_HZ).feed(samples)]
    speech = [gate.speech_on(h) for h in range(gate.settled_through(len(loud) - 1) + 1)]
    assert not any(speech[:99])
    assert all(speech[101:100 + burst_hops - 1])
    assert not any(speech[100 + burst_hops + HANGOVER_HOPS + 2:])
    click = 200 + burst_hops
    assert any(loud[click:click + click_hops])  # loud enough, but too short to be speech


def test_a_loud_run_is_speech_from_min_speech_run_ms_on():
    def speech_with_run(run_hops: int) -> list[bool]:
        return gate_speech([QUIET_DB] * 50 + [LOUD_DB] * run_hops + [QUIET_DB] * 50)

    assert not any(speech_with_run(MIN_RUN_HOPS - 1))
    speech = speech_with_run(MIN_RUN_HOPS)
    assert all(speech[50:50 + MIN_RUN_HOPS]) and not any(speech[:50])  # speech from the run's first hop


def test_gate_bridges_a_gap_shorter_than_the_hangover_and_closes_after_a_longer_one():
    def speech_with_gap(gap_hops: int) -> list[bool]:
        return gate_speech([QUIET_DB] * 50 + [LOUD_DB] * 20 + [QUIET_DB] * gap_hops + [LOUD_DB] * 20 + [QUIET_DB] * 50)

    assert all(speech_with_gap(HANGOVER_HOPS)[50:50 + 20 + HANGOVER_HOPS + 20])
    speech = speech_with_gap(2 * HANGOVER_HOPS)
    gap = range(70, 70 + 2 * HANGOVER_HOPS)
    assert [speech[h] for h in gap] == [True] * HANGOVER_HOPS + [False] * HANGOVER_HOPS
    assert all(speech[70 + 2 * HANGOVER_HOPS:70 + 2 * HANGOVER_HOPS + 20])


def test_steady_noise_is_never_speech_and_the_floor_follows_it_down():
    speech = gate_speech([-30.0] * 300 + [-70.0] * 200 + [-30.0] * 20 + [-70.0] * 50)
    assert not any(speech[:300])  # as loud as the burst below, but steady: the floor
    assert all(speech[500:520])


# --- stage 2: hop targets -------------------------------------------------------------------

VOWEL = Hop(hop_db=-20.0, f1_db=-22.0, high_db=-45.0, total_db=-18.0, f2_centroid_hz=1800.0, all_centroid_hz=800.0)


def warmed_tracker(shift_db: float = 0.0) -> TargetTracker:
    """A tracker that has heard half a second of this vowel (levels shifted by shift_db)."""
    tracker = TargetTracker()
    for _ in range(50):
        tracker.step(shifted(VOWEL, shift_db), loud=True)
    return tracker


def shifted(hop: Hop, shift_db: float) -> Hop:
    return hop._replace(hop_db=hop.hop_db + shift_db, f1_db=hop.f1_db + shift_db, high_db=hop.high_db + shift_db,
                        total_db=hop.total_db + shift_db)


def test_no_speech_heard_yet_asks_for_nothing():
    assert TargetTracker().step(VOWEL, loud=False) == SILENT_TARGET


def test_a_louder_first_formant_band_opens_more_at_the_same_total():
    strong = warmed_tracker().step(VOWEL, loud=True)
    weak = warmed_tracker().step(VOWEL._replace(f1_db=VOWEL.f1_db - 6), loud=True)
    assert 0.0 < weak.open < strong.open - 0.2 and strong.open < 1.0
    assert not strong.closure and not weak.closure


def test_targets_do_not_depend_on_the_gain():
    hop = VOWEL._replace(f1_db=-26.0, f2_centroid_hz=2100.0)
    loud = warmed_tracker().step(hop, loud=True)
    quiet = warmed_tracker(-20.0).step(shifted(hop, -20.0), loud=True)
    assert np.allclose(loud[:3], quiet[:3], atol=1e-9) and loud.closure == quiet.closure


def test_a_voiced_hop_with_no_first_formant_and_a_low_second_is_a_closure():
    murmur = VOWEL._replace(f1_db=-55.0, high_db=-60.0, total_db=-30.0, f2_centroid_hz=1200.0)
    closure = warmed_tracker().step(murmur, loud=True)
    assert closure.closure and closure.open == 0.0
    assert not warmed_tracker().step(murmur._replace(f2_centroid_hz=2600.0), loud=True).closure  # not labial
    assert not warmed_tracker().step(murmur._replace(high_db=-32.0), loud=True).closure  # a hiss
    assert not warmed_tracker().step(murmur, loud=False).closure  # quiet: the end of speech


def test_lips_part_in_voiced_speech_and_not_in_a_breath():
    # a voiced consonant: as loud as the vowel, little of it in the first-formant band, not labial
    consonant = VOWEL._replace(f1_db=-50.0, f2_centroid_hz=2200.0)
    assert warmed_tracker().step(consonant, loud=True).open == LIPS_APART_OPEN
    breath = shifted(consonant, -LIPS_APART_WITHIN_DB - 10)
    assert warmed_tracker().step(breath, loud=True).open < LIPS_APART_OPEN
    assert warmed_tracker().step(consonant, loud=False).open < LIPS_APART_OPEN
    murmur = VOWEL._replace(f1_db=-55.0, high_db=-60.0, total_db=-30.0, f2_centroid_hz=1200.0)
    assert warmed_tracker().step(murmur, loud=True).open == 0.0  # a closure stays shut


def test_a_faint_hop_is_heard_as_silence_by_the_phonetic_driver():
    # a phone's opening is scaled by how much of a voice its hop is: a breath or a word's fading tail
    # far under the speech level rests the lips; speech near its level keeps the full opening
    tracker = warmed_tracker()
    assert TargetTracker().voiced_share(VOWEL) == 1.0  # nothing heard yet: no level to compare with
    assert tracker.voiced_share(VOWEL) == 1.0
    assert tracker.voiced_share(shifted(VOWEL, -15.0)) == 1.0
    shares = [tracker.voiced_share(shifted(VOWEL, -d)) for d in range(15, 60, 3)]
    assert shares == sorted(shares, reverse=True) and shares[-1] == 0.0
    assert tracker.voiced_share(shifted(VOWEL, tracker.level_db - FAINT_BELOW_LEVEL_DB - VOWEL.total_db)) == 0.0


def test_high_and_low_centroids_spread_and_round_the_lips():
    front = warmed_tracker().step(VOWEL._replace(f2_centroid_hz=2300.0), loud=True)
    back = warmed_tracker().step(VOWEL._replace(f2_centroid_hz=1300.0, all_centroid_hz=500.0), loud=True)
    assert front.wide > back.wide + 0.3 and back.round > front.round + 0.3


# --- stage 3: frame smoother ----------------------------------------------------------------

def smooth(targets: list[HopTarget], speech: list[bool] | None = None, *, fps: Fraction = Fraction(25),
           motion: Motion = LIVE_MOTION, ahead_ms: int = AHEAD_MS) -> list[MouthParams]:
    """Run a smoother over per-hop targets (hop 0 on) and per-hop speech flags (default: all speech)."""
    speech = [True] * len(targets) if speech is None else speech
    smoother, out = FrameSmoother(fps=fps, motion=motion), []
    for target in targets:
        smoother.add(target)
    while (hops := frame_hops(len(out), fps=fps, sample_rate_hz=SAMPLE_RATE_HZ, ahead_ms=ahead_ms)).last < len(targets):
        out.append(smoother.frame(hops, speech=speech[hops.centre], next_speech=speech[hops.next_centre]))
    return out


def random_targets(n_hops: int, *, seed: int, closure_rate: float = 0.0) -> list[HopTarget]:
    """Targets that jump to a new random mouth every 1..8 hops, some of them closures."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n_hops:
        open_, wide, round_ = rng.random(3).tolist()
        closure = bool(rng.random() < closure_rate)
        out += [HopTarget(0.0 if closure else open_, wide, round_, closure)] * int(rng.integers(1, 9))
    return out[:n_hops]


@pytest.mark.parametrize("motion", [LIVE_MOTION, PHONETIC_MOTION], ids=["live", "phonetic"])
@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)], ids=str)
def test_lips_move_within_the_speed_and_acceleration_limits(fps, motion):
    frames = smooth(random_targets(3000, seed=1), fps=fps, motion=motion)
    step, accel = motion.max_speed_per_s / float(fps), motion.max_accel_per_s2 / float(fps) ** 2
    moves = np.diff([(p.open, p.wide, p.round) for p in frames], axis=0)  # (frames - 1, 3)
    assert np.all(np.abs(moves).max(axis=0) <= step + 1e-9)
    assert np.all(np.abs(moves).max(axis=0) > step * 0.99)  # the targets do ask for more, of all three
    assert np.abs(np.diff(moves, axis=0)).max() <= accel + 1e-9


def test_the_follower_bounds_acceleration_when_the_target_jumps():
    follower = Follower(pole=0.0, max_step=1.0, max_accel=0.05)  # no lag: only the limits hold it back
    values = [follower.follow(t) for t in [0.8] * 30 + [0.2] * 30]
    steps = np.diff([0.0] + values)
    assert np.abs(np.diff(np.concatenate([[0.0], steps]))).max() <= 0.05 + 1e-12
    assert abs(values[29] - 0.8) < 0.02 and abs(values[-1] - 0.2) < 0.02  # it gets there all the same
    assert max(values) < 0.95 and min(values[30:]) > 0.05  # braking in time: no end-stop crash


def test_a_jump_of_the_target_is_followed_without_overshoot_and_settles():
    fps = Fraction(25)
    frames = smooth([HopTarget(0.0, 0.3, 0.0, False)] * 40 + [HopTarget(0.6, 0.3, 0.0, False)] * 160, fps=fps)
    opens = np.array([p.open for p in frames])
    rise = opens[5:]
    assert np.all(np.diff(rise) >= -1e-12) and rise.max() <= 0.6 + 1e-9  # critically damped: no overshoot
    steps = np.diff(rise)
    assert np.sum(steps > 1e-6) >= 3  # it travels over frames, not in one jump
    settle_frames = int(np.ceil(2 / LIVE_MOTION.natural_hz * float(fps)))  # about two natural periods
    first_move = 5 + int(np.flatnonzero(steps > 1e-6)[0])
    assert opens[first_move + settle_frames] > 0.6 - 0.03


def test_only_closures_and_silence_are_faster_than_the_speed_limit():
    targets = random_targets(3000, seed=2, closure_rate=0.1)
    speech = [bool(x) for x in np.repeat(np.random.default_rng(3).random(100) < 0.8, 30)]
    frames = smooth(targets, speech)
    step = LIVE_MOTION.max_speed_per_s / 25
    fast = [b for a, b in zip(frames, frames[1:]) if abs(b.open - a.open) > step + 1e-9]
    assert fast  # the targets and the silences do jump
    assert all(p.closed or p == REST for p in fast)
    assert all(p == REST for p, h in zip(frames, range(len(frames))) if not speech[frame_hops(
        h, fps=Fraction(25), sample_rate_hz=SAMPLE_RATE_HZ).centre])


def test_shapes_are_held_at_least_hold_ms():
    fps = Fraction(30)
    frames = smooth(random_targets(3000, seed=4), fps=fps)
    runs, length = [], 1
    for a, b in zip(frames, frames[1:]):
        if a.shape == b.shape:
            length += 1
        else:
            runs.append(length)
            length = 1
    assert len(runs) > 20  # the shape does change
    assert min(runs) / fps >= Fraction(HOLD_MS, 1000)


HEARS_NEXT_FRAME_MS = 50  # a smoother reading this far ahead at 25 fps hears the next frame's closure
# (the live driver reads less and does not; the render's driver reads more, see test_phones.py)


@pytest.mark.parametrize("closure_hops", [(-1, 0, 1), (0, 1)])
def test_a_one_frame_closure_is_kept(closure_hops):
    fps = Fraction(25)
    centre = frame_hops(10, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ).centre
    targets = [HopTarget(0.8, 0.3, 0.0, False)] * 100
    for k in closure_hops:  # most of the three hops around frame 10's centre
        targets[centre + k] = HopTarget(0.0, 0.3, 0.0, True)
    frames = smooth(targets, fps=fps, ahead_ms=HEARS_NEXT_FRAME_MS)
    assert [p.closed for p in frames[5:16]] == [i == 10 for i in range(5, 16)]
    assert frames[10].open == 0.0 and frames[10].shape == "A"
    assert frames[9].open < frames[8].open  # the lips were already on their way
    assert 0.0 < frames[11].open <= LIVE_MOTION.max_speed_per_s / fps + 1e-9  # and open again at lip speed


def test_a_slow_follower_still_shuts_on_a_closure_and_rests_in_silence():
    heavy_jaw = LIVE_MOTION._replace(natural_hz=1.0)  # seconds to settle
    fps = Fraction(25)
    centre = frame_hops(30, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ).centre
    targets = [HopTarget(0.8, 0.3, 0.0, False)] * 300
    targets[centre - 1:centre + 2] = [HopTarget(0.0, 0.3, 0.0, True)] * 3
    frames = smooth(targets, [True] * 200 + [False] * 100, fps=fps, motion=heavy_jaw)
    assert frames[29].open > 0.2 and frames[30].closed and frames[30].open == 0.0
    assert [p.closed for p in frames[25:36]] == [i == 30 for i in range(25, 36)]
    first_silent = next(i for i in range(len(frames)) if not frames[i].speech)
    assert frames[first_silent - 5].open > 0.2 and set(frames[first_silent:]) == {REST}


def test_one_closure_hop_alone_is_not_a_closure():
    centre = frame_hops(10, fps=Fraction(25), sample_rate_hz=SAMPLE_RATE_HZ).centre
    targets = [HopTarget(0.8, 0.3, 0.0, False)] * 100
    targets[centre] = HopTarget(0.0, 0.3, 0.0, True)
    assert not any(p.closed for p in smooth(targets))


def test_silence_is_rest_at_once():
    targets = [HopTarget(0.8, 0.5, 0.2, False)] * 200
    frames = smooth(targets, [True] * 100 + [False] * 100)
    first_silent = next(i for i in range(len(frames))
                        if frame_hops(i, fps=Fraction(25), sample_rate_hz=SAMPLE_RATE_HZ).centre >= 100)
    assert frames[first_silent - 3].open > 0.5 and frames[first_silent - 1].speech
    assert set(frames[first_silent:]) == {REST}


def test_lips_approach_a_closure_and_the_end_of_speech_over_two_frames():
    fps = Fraction(25)
    step = LIVE_MOTION.max_speed_per_s / fps
    centre = frame_hops(10, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ).centre
    half_open = HopTarget(0.3, 0.3, 0.0, False)  # within two steps of shut, more than one
    targets = [half_open] * 200
    targets[centre - 1:centre + 2] = [HopTarget(0.0, 0.3, 0.0, True)] * 3
    frames = smooth(targets, [True] * 100 + [False] * 100, fps=fps, ahead_ms=HEARS_NEXT_FRAME_MS)
    assert frames[8].open > step and frames[9].open <= step + 1e-9 and frames[10].closed
    last_spoken = max(i for i, p in enumerate(frames) if p.speech)
    assert frames[last_spoken - 2].open > step and frames[last_spoken].open <= step + 1e-9
