"""The render's phonetic driver: phone labels per hop, segments cut the same whatever the chunking,
and mouth targets that shut on P/B/M and open on open vowels."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from conftest import SPEECH_16K, shared
from lipsync_cli.core.driver import MouthDriver, drive
from lipsync_cli.core.motion import PHONETIC_MOTION
from lipsync_cli.core.phones import (PHONE_TARGETS, SILENCE, PhoneLabeller, decode_hops, phone_target,
                                     recognise_hops)
from lipsync_cli.errors import AudioError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio

HOP = SAMPLE_RATE_HZ // 100
OPEN_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "EY")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """8 s of a real recording (16 kHz mono)."""
    return load_audio(shared(SPEECH_16K)).samples[: 8 * SAMPLE_RATE_HZ]


def test_real_speech_gets_phones_with_closures_and_open_vowels(speech):
    labels = recognise_hops(speech)
    assert len(labels) == len(speech) // HOP
    assert {"P", "B", "M"} & set(labels) and set(OPEN_VOWELS) & set(labels)
    # the recogniser names some phone even in digital silence: the speech gate, not the phones, says
    # where speech is, so the driver rests there
    silence = np.zeros(SAMPLE_RATE_HZ, np.float32)
    assert len(recognise_hops(silence)) == 100
    assert not any(p.speech or p.open for p in drive(silence, fps=Fraction(25), phonetic=True))


def test_the_targets_shut_on_bilabials_and_open_most_on_open_vowels():
    for label in ("P", "B", "M"):
        assert phone_target(label).closure and phone_target(label).open == 0.0
    least_open_vowel = min(PHONE_TARGETS[v].open for v in OPEN_VOWELS)
    consonants = [t.open for label, t in PHONE_TARGETS.items() if label not in OPEN_VOWELS and len(label) <= 2
                  and label not in ("AA", "ER", "IH", "IY", "OW", "OY", "UH", "UW")]
    assert least_open_vowel > max(consonants)
    assert phone_target("UW").round > 0.9 and phone_target("IY").wide > 0.5
    assert phone_target(SILENCE) == phone_target("+NSN+") == phone_target("never-heard")
    assert phone_target(SILENCE).open == 0.0 and not phone_target(SILENCE).closure


@pytest.mark.parametrize("chunk", [37, 4410, 3 * SAMPLE_RATE_HZ])
def test_segments_are_cut_the_same_in_any_chunks(speech, chunk):
    def run(pieces):
        labeller = PhoneLabeller(max_segment_s=3.0, min_segment_s=1.5)
        out = [labeller.push(p) for p in pieces] + [labeller.flush()]
        return np.concatenate([s for s, _ in out]), [label for _, labels in out for label in labels]

    whole_samples, whole_labels = run([speech])
    samples, labels = run([speech[i:i + chunk] for i in range(0, len(speech), chunk)])
    assert np.array_equal(samples, speech) and np.array_equal(whole_samples, speech)
    assert labels == whole_labels and len(labels) == -(-len(speech) // HOP)
    # 8 s in segments of at most 3 s: the labeller did cut, and the labels still find speech
    assert sum(label == "SIL" for label in labels) < len(labels) / 2


def test_the_phonetic_driver_gives_the_same_frames_in_any_chunks(speech):
    fps = Fraction(25)
    whole = drive(speech, fps=fps, phonetic=True)
    driver = MouthDriver(fps=fps, phonetic=True)
    chunked = [p for i in range(0, len(speech), 999) for p in driver.push(speech[i:i + 999])] + driver.flush()
    assert chunked == whole and len(whole) == len(speech) * 25 // SAMPLE_RATE_HZ
    assert any(p.closed for p in whole) and max(p.open for p in whole) > 0.6


def test_the_phonetic_driver_needs_16k():
    with pytest.raises(AudioError, match="16000 Hz"):
        MouthDriver(fps=Fraction(25), sample_rate_hz=48_000, phonetic=True)


def test_the_render_driver_brings_the_lips_to_each_closure_and_pause_at_lip_speed(speech):
    # it reads far enough ahead to start closing in time: no snap from open to shut
    params = drive(speech, fps=Fraction(25), phonetic=True)
    step = PHONETIC_MOTION.max_speed_per_s / 25
    opens = np.array([p.open for p in params])
    shut = np.array([p.closed or not p.speech for p in params])
    into_shut = [i for i in range(1, len(params)) if shut[i] and not shut[i - 1]]
    assert len(into_shut) >= 5
    assert all(opens[i - 1] <= step + 1e-9 for i in into_shut), [round(opens[i - 1], 3) for i in into_shut]
    assert np.abs(np.diff(opens)).max() <= step + 1e-9


def test_recognising_phones_leaves_this_process_free(speech):
    """pocketsphinx holds the GIL through a whole decode (a second per 20 s of speech): in this
    process every other thread would stop, a `serve`'s live streams among them. The decode runs in a
    process of its own, gives the same labels as here, and a thread here keeps its pace meanwhile."""
    clip = np.tile(speech, 3)  # 24 s: a decode of about a second
    ticks: list[float] = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.002)

    ticker = threading.Thread(target=tick)
    ticker.start()
    t0 = time.perf_counter()
    try:
        labels = recognise_hops(clip)
    finally:
        done.set()
        ticker.join()
    took_s = time.perf_counter() - t0
    during = np.array([t for t in ticks if t >= t0])
    longest_stop_s = float(np.diff(np.concatenate([[t0], during, [t0 + took_s]])).max())
    assert longest_stop_s < 0.25 * took_s, (longest_stop_s, took_s)
    assert labels == decode_hops(clip)  # here, the thread above would have stopped for the whole decode
