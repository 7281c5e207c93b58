"""The mouth driver: frame counts, streaming, silence, clicks, and mouths that follow real speech.

The speech figures use the same measure as bench/driver_eval.py: pocketsphinx phone recognition on
the real recordings in ../shared/data marks open-vowel and P/B/M frames, and the driver's `open`
must separate them (real people filmed talking score 0.65-0.82 on this AUC; the thresholds below
sit a little under what this driver measures, so a regression fails).
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import numpy as np
import pytest

from conftest import REPO, SPEECH_16K, SPEECH_44K, SPEECH_48K, espeak_wav, shared
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio, resample
from lipsync_cli.core.driver import REST, MouthDriver, drive
from lipsync_cli.errors import AudioError
from lipsync_cli.core.timing import first_sample_of_frame, frame_count

sys.path.insert(0, str(REPO / "bench"))
import driver_eval  # noqa: E402  (bench/driver_eval.py: the shared measures)

FPS_CHOICES = [Fraction(25), Fraction(30), Fraction(30000, 1001)]
RECORDINGS = [SPEECH_16K, SPEECH_44K, SPEECH_48K]
# measured at 25 fps: auc 0.87 / 0.98 / 0.97 (all frames), 0.95 / 1.0 / 1.0 (mid-phone frames)
MIN_AUC = {SPEECH_16K.name: 0.83, SPEECH_44K.name: 0.90, SPEECH_48K.name: 0.90}
MIN_POOLED_AUC = 0.85
MAX_OPEN_STEP_P95 = 0.33  # people filmed talking: a third of their range per frame at most
MAX_JUMPINESS = 0.30  # the judge's jumpiness on `open` (goal 0.35 rendered; measured 0.20-0.25 here)
MIN_CLOSED_IN_SILENCE = 0.85  # the judge's closed-in-silence on `open`, ties at random (measured 0.89-1.0
# here; the old smoother 0.79-1.0, goal 0.9 rendered)
LOOKAHEAD_LIMIT_MS = 60.0  # the live path budget is 60 ms audio-to-frame


def faint_noise(n_samples: int, *, dbfs: float = -70.0) -> np.ndarray:
    """(n_samples,) float32 white noise at this RMS level."""
    return np.random.default_rng(0).normal(0.0, 10 ** (dbfs / 20), n_samples).astype(np.float32)


@pytest.fixture(scope="module")
def recordings() -> dict[str, tuple[np.ndarray, list]]:
    """name -> (16 kHz mono samples, pocketsphinx phones), for the real recordings."""
    pytest.importorskip("pocketsphinx", reason="pocketsphinx is needed to label phones (pip install pocketsphinx)")
    out = {}
    for path in RECORDINGS:
        samples = load_audio(shared(path)).samples
        out[path.name] = (samples, driver_eval.recognise_phones(samples))
    return out


@pytest.fixture(scope="module")
def sentence(tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("speech") / "sentence.wav"
    espeak_wav(path, "Bob bought my mom a map of the bay, and the father saw a hot dog on top of the cart.")
    return load_audio(path).samples


@pytest.mark.parametrize("fps", FPS_CHOICES, ids=str)
@pytest.mark.parametrize("n_samples", [0, 1, 639, 640, 641, 16_000, 123_457])
def test_one_frame_per_video_frame(fps, n_samples):
    samples = faint_noise(n_samples, dbfs=-30)
    assert len(drive(samples, fps=fps)) == frame_count(n_samples, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ)


@pytest.mark.parametrize("fps", FPS_CHOICES, ids=str)
def test_push_in_random_chunks_equals_drive(sentence, fps):
    expected = drive(sentence, fps=fps)
    rng = np.random.default_rng(7)
    driver, got, i = MouthDriver(fps=fps), [], 0
    while i < len(sentence):
        n = int(rng.choice([0, 1, 37, 160, 480, 641, 2000, 8000]))
        got += driver.push(sentence[i:i + n])
        i += n
    got += driver.flush()
    assert got == expected
    assert driver.flush() == []


@pytest.mark.parametrize("fps", FPS_CHOICES, ids=str)
def test_frames_come_out_within_the_lookahead(sentence, fps):
    driver = MouthDriver(fps=fps)
    assert driver.lookahead_ms <= LOOKAHEAD_LIMIT_MS
    lookahead = int(np.ceil(driver.lookahead_ms * SAMPLE_RATE_HZ / 1000))
    chunk, pushed, done = 80, 0, 0
    for i in range(0, len(sentence) - chunk + 1, chunk):
        done += len(driver.push(sentence[i:i + chunk]))
        pushed += chunk
        # every frame whose end lies `lookahead` or more before the pushed audio is out
        due = 0
        while first_sample_of_frame(due + 1, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ) + lookahead <= pushed:
            due += 1
        assert done >= due


def test_silence_is_rest():
    n = 3 * SAMPLE_RATE_HZ
    for samples in (np.zeros(n, dtype=np.float32), faint_noise(n), faint_noise(n, dbfs=-30)):
        assert set(drive(samples, fps=Fraction(25))) == {REST}


def test_a_click_in_silence_keeps_the_mouth_shut():
    samples = faint_noise(4 * SAMPLE_RATE_HZ)
    samples[16_000] = 0.9  # one-sample tick
    samples[32_000:32_048] = 0.5 * np.sign(np.sin(np.arange(48)))  # a 3 ms click
    samples[48_000:48_080] = np.hanning(80) * 0.7  # a 5 ms knock
    params = drive(samples, fps=Fraction(25))
    assert all(p.open == 0.0 and not p.speech for p in params)


def test_mouth_shuts_in_silence_and_opens_in_speech(sentence):
    samples = np.concatenate([np.zeros(SAMPLE_RATE_HZ, np.float32), sentence, np.zeros(SAMPLE_RATE_HZ, np.float32)])
    params = drive(samples, fps=Fraction(25))
    assert set(params[:20]) == {REST} and set(params[-20:]) == {REST}
    spoken = [p for p in params[25:-25] if p.speech]
    assert len(spoken) > 0.8 * (len(params) - 50)
    assert max(p.open for p in spoken) > 0.5


def test_open_vowels_open_the_mouth_more_than_p_b_m(recordings):
    fps = Fraction(25)
    pooled_open, pooled_labels = [], []
    for name, (samples, phones) in recordings.items():
        opens = np.array([p.open for p in drive(samples, fps=fps)])
        labels = driver_eval.frame_phones(phones, len(opens), fps=fps, middle_only=False)
        assert driver_eval.open_auc(opens, labels) >= MIN_AUC[name], name
        pooled_open.append(opens)
        pooled_labels += labels
    assert driver_eval.open_auc(np.concatenate(pooled_open), pooled_labels) >= MIN_POOLED_AUC


@pytest.mark.parametrize("fps", FPS_CHOICES, ids=str)
def test_lips_move_no_faster_than_real_ones(recordings, fps):
    for name, (samples, _) in recordings.items():
        opens = np.array([p.open for p in drive(samples, fps=fps)])
        steps = np.abs(np.diff(opens))
        assert np.percentile(steps, 95) <= MAX_OPEN_STEP_P95, name
        # ... relative to how wide this clip opens, too (that is what a viewer sees)
        assert np.percentile(steps, 95) <= MAX_OPEN_STEP_P95 * np.percentile(opens, 99), name
        assert 0.0 <= opens.min() and opens.max() <= 1.0


@pytest.mark.parametrize("fps", FPS_CHOICES, ids=str)
def test_the_judges_jumpiness_and_closed_in_silence(recordings, fps):
    for name, (samples, _) in recordings.items():
        opens = np.array([p.open for p in drive(samples, fps=fps)])
        assert driver_eval.jumpiness(opens) <= MAX_JUMPINESS, name
        assert driver_eval.closed_in_silence(samples, opens, fps=fps) >= MIN_CLOSED_IN_SILENCE, name


def test_mouth_is_in_sync_and_shut_in_pauses(recordings):
    fps = Fraction(25)
    for name, (samples, phones) in recordings.items():
        opens = np.array([p.open for p in drive(samples, fps=fps)])
        assert abs(driver_eval.best_offset_frames(samples, opens, fps=fps)) <= 1, name
        labels = driver_eval.frame_phones(phones, len(opens), fps=fps, middle_only=True)
        silent = np.array([lab == driver_eval.SILENCE for lab in labels])
        assert (opens[silent] < driver_eval.SHUT_OPEN).mean() >= 0.9, name


def test_quieter_speech_gives_the_same_mouth(recordings):
    samples, _ = recordings[SPEECH_16K.name]
    loud = drive(samples, fps=Fraction(25))
    quiet = drive(samples * np.float32(0.1), fps=Fraction(25))  # -20 dB
    assert np.mean([a.speech == b.speech for a, b in zip(loud, quiet)]) >= 0.99
    assert np.mean([abs(a.open - b.open) for a, b in zip(loud, quiet)]) < 0.01


def test_lips_close_on_p_b_m(tmp_path):
    def closed_frames(text: str) -> int:
        path = espeak_wav(tmp_path / "s.wav", text)
        return sum(p.closed for p in drive(load_audio(path).samples, fps=Fraction(25)))

    with_bilabials = closed_frames("Bob bought my mom a map, maybe Pam will bring a bomb.")
    without = closed_frames("She said the tree is tall, and the kid is sad.")
    assert with_bilabials >= 8
    assert with_bilabials >= 3 * without


def test_closed_frames_sit_on_p_b_m_in_real_speech(recordings):
    near, total = 0, 0
    for samples, phones in recordings.values():
        params = drive(samples, fps=Fraction(25))
        labels = driver_eval.frame_phones(phones, len(params), fps=Fraction(25), middle_only=False)
        for i, p in enumerate(params):
            if p.closed:
                assert p.open == 0.0 and p.shape == "A"
                total += 1
                near += any(lab in driver_eval.BILABIALS for lab in labels[max(0, i - 1):i + 2])
    base_rate = 0.11  # share of all speech frames within a frame of a P/B/M label in these clips
    assert total > 0 and near / total > 2 * base_rate  # measured 0.27


def test_vowel_shapes(tmp_path):
    def mean_params(text: str) -> tuple[float, float]:
        path = espeak_wav(tmp_path / "v.wav", text)
        spoken = [p for p in drive(load_audio(path).samples, fps=Fraction(25)) if p.speech]
        return np.mean([p.open for p in spoken]), np.mean([p.wide for p in spoken])

    open_ah, wide_ah = mean_params("Pa, ah, father, hot pot")
    open_ee, wide_ee = mean_params("ee ee ee, see me, three trees")
    assert open_ah > open_ee
    assert wide_ee > wide_ah + 0.2


def test_other_rates_give_the_same_mouth(sentence):
    at_48k = resample(sentence, from_rate_hz=SAMPLE_RATE_HZ, to_rate_hz=48_000)
    a = drive(sentence, fps=Fraction(25))
    b = drive(at_48k, fps=Fraction(25), sample_rate_hz=48_000)
    assert len(a) == len(b)
    assert np.mean([x.speech == y.speech for x, y in zip(a, b)]) > 0.95
    assert np.mean([abs(x.open - y.open) for x, y in zip(a, b)]) < 0.05


def test_bad_input_is_refused():
    driver = MouthDriver(fps=Fraction(25))
    with pytest.raises(AudioError, match="mono"):
        driver.push(np.zeros((100, 2), dtype=np.float32))
    with pytest.raises(AudioError, match="NaN"):
        driver.push(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError, match="resample"):
        MouthDriver(fps=Fraction(25), sample_rate_hz=8000)


def test_push_is_cheap(recordings):
    samples, _ = recordings[SPEECH_16K.name]
    driver = MouthDriver(fps=Fraction(25))
    chunk = SAMPLE_RATE_HZ // 50  # 20 ms, as a microphone delivers it
    frames, start = 0, time.process_time()
    for i in range(0, len(samples), chunk):
        frames += len(driver.push(samples[i:i + chunk]))
    per_frame_ms = (time.process_time() - start) / frames * 1000
    assert per_frame_ms < 1.0  # measured ~0.18 ms; 12 live streams on 2 cores need well under 1 ms


def _frame_levels_db(clip: np.ndarray, n_frames: int, *, fps: Fraction) -> np.ndarray:
    """(n_frames,) RMS of each video frame's samples of a 16 kHz clip, in dB (floor 1e-4)."""
    bounds = [first_sample_of_frame(i, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ) for i in range(n_frames + 1)]
    return np.array([20 * np.log10(max(float(np.sqrt(np.mean(clip[a:b] ** 2))), 1e-4))
                     for a, b in zip(bounds, bounds[1:])])


@pytest.mark.parametrize("fps", [25, 30])
def test_the_lips_are_shut_once_a_fading_word_is_heard_as_silence(fps):
    """Speech that fades out (a word's tail, a room's decay: 60 dB in 0.4 s), 6 s of a real recording
    ending at twelve places: the render's mouth must be shut by the time the sound is 35 dB under the
    clip's loudest frame (the judge's silence), not start closing there at lip speed (at most 0.07
    open; 0.21-0.23 before stop 27)."""
    pytest.importorskip("pocketsphinx", reason="pocketsphinx is needed to label phones (pip install pocketsphinx)")
    speech = load_audio(shared(SPEECH_16K)).samples
    fade_n = int(0.4 * SAMPLE_RATE_HZ)
    fade = (10 ** (-3 * np.arange(fade_n) / fade_n)).astype(np.float32)
    rate = Fraction(fps)
    worst: list[float] = []
    for cut_s in np.arange(6.0, 19.0, 1.1):
        cut = int(cut_s * SAMPLE_RATE_HZ)
        clip = np.concatenate([speech[cut - 6 * SAMPLE_RATE_HZ:cut], speech[cut:cut + fade_n] * fade,
                               np.zeros(SAMPLE_RATE_HZ, np.float32)])
        params = drive(clip, fps=rate, phonetic=True)
        level_db = _frame_levels_db(clip, len(params), fps=rate)
        faded = [p.open for i, p in enumerate(params) if i >= 6 * fps and level_db[i] < level_db.max() - 35]
        worst.append(max(faded))
    assert max(worst) <= 0.12, round(max(worst), 3)


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("gain_db", [-8, -16])
def test_a_soft_talker_after_a_loud_one_rests_where_the_clip_is_silent(fps, gain_db):
    """8 s of a loud recording, then another one 8 or 16 dB quieter (the long mixes join such). The
    running speech level follows the soft talker down, so alone it heard the soft one's word ends and
    pauses as speech; the frames 35 dB under the clip's loudest (the judge's silence) must rest:
    their 90th percentile of `open` at most 0.05, the mean 0.02 (0.15-0.23 and 0.03-0.06 before
    stop 28), while the soft speech itself still opens (90th percentile of `open` 0.35 or more on its
    frames within 12 dB of its loudest)."""
    pytest.importorskip("pocketsphinx", reason="pocketsphinx is needed to label phones (pip install pocketsphinx)")
    loud = load_audio(shared(SPEECH_16K)).samples[:8 * SAMPLE_RATE_HZ]
    soft = load_audio(shared(SPEECH_44K)).samples * np.float32(10 ** (gain_db / 20))
    gap = np.zeros(SAMPLE_RATE_HZ // 2, np.float32)
    clip = np.concatenate([loud, gap, soft])
    rate = Fraction(fps)
    opens = np.array([p.open for p in drive(clip, fps=rate, phonetic=True)])
    level_db = _frame_levels_db(clip, len(opens), fps=rate)
    in_soft = np.arange(len(opens)) * SAMPLE_RATE_HZ / fps >= len(loud) + len(gap)
    silent = in_soft & (level_db < level_db.max() - 35)
    speaking = in_soft & (level_db >= level_db[in_soft].max() - 12)
    assert silent.sum() > 50 and speaking.sum() > 50
    assert np.percentile(opens[silent], 90) <= 0.05 and opens[silent].mean() <= 0.02, (
        round(float(np.percentile(opens[silent], 90)), 3), round(float(opens[silent].mean()), 3))
    assert np.percentile(opens[speaking], 90) >= 0.35, round(float(np.percentile(opens[speaking], 90)), 3)
