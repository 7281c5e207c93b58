"""Audio in: every rate, channel count and sample type a user may have, to one analysis format."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SPEECH_48K, shared, write_wav
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, StreamResampler, load_audio, resample, to_mono
from lipsync_cli.errors import AudioError


def _tone(rate_hz: int, seconds: float = 1.0, freq_hz: float = 1000.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    mono = (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono


def _peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * SAMPLE_RATE_HZ / len(samples))


@pytest.mark.parametrize("rate_hz,channels,subtype", [
    (8000, 1, "PCM_U8"), (22050, 2, "PCM_16"), (44100, 2, "PCM_24"), (48000, 6, "PCM_32"), (96000, 1, "FLOAT"),
])
def test_any_wav_becomes_16k_mono_with_its_pitch_kept(tmp_path, rate_hz, channels, subtype):
    path = write_wav(tmp_path / "tone.wav", _tone(rate_hz, channels=channels), rate_hz, subtype=subtype)
    clip = load_audio(path)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(len(clip.samples) - SAMPLE_RATE_HZ) <= 1
    assert abs(_peak_hz(clip.samples) - 1000.0) < 5
    assert clip.original.shape == (rate_hz, channels) and clip.original_rate_hz == rate_hz


def test_flac_and_m4a_are_read(tmp_path):
    import av

    flac = write_wav(tmp_path / "tone.flac", _tone(44100), 44100, subtype="PCM_16")
    assert abs(_peak_hz(load_audio(flac).samples) - 1000.0) < 5
    m4a = tmp_path / "tone.m4a"  # AAC, which libsndfile does not read: FFmpeg (PyAV) does
    with av.open(str(m4a), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"
        samples = _tone(48000, seconds=1.0)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 48000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    clip = load_audio(m4a)
    assert clip.original_rate_hz == 48000 and abs(clip.duration_s - 1.0) < 0.1
    assert abs(_peak_hz(clip.samples[2000:14000]) - 1000.0) < 5


def test_an_m4a_ends_where_its_sound_ends_not_at_the_aac_padding(tmp_path):
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    wav = write_wav(tmp_path / "tone.wav", _tone(16000), 16000)
    m4a = tmp_path / "tone.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    clip = load_audio(m4a)  # 1 s is 15.6 AAC frames: the 16th is padded to 1024 samples
    assert clip.original.shape == (16000, 1) and len(clip.samples) == 16000


def test_a_text_file_is_refused(tmp_path):
    text = tmp_path / "speech.wav"
    text.write_text("hello\n" * 100)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(text)


def test_a_video_or_picture_without_sound_is_named_as_such(tmp_path):
    import cv2

    from helpers import make_video

    frame = np.full((64, 64, 3), 128, np.uint8)
    video = make_video(tmp_path / "take.mp4", [frame] * 5)  # a user's silent clip given as the speech
    picture = tmp_path / "face.png"
    cv2.imwrite(str(picture), frame)
    for path in (video, picture):
        with pytest.raises(AudioError, match="no sound track"):
            load_audio(path)


def _stream(resampler: StreamResampler, samples: np.ndarray, chunk: int) -> np.ndarray:
    parts = [resampler.push(samples[i:i + chunk]) for i in range(0, len(samples), chunk)]
    return np.concatenate([*parts, resampler.flush()])


@pytest.mark.parametrize("rate_hz", [48000, 44100, 22050, 8000])
def test_the_stream_resampler_ignores_chunking_and_matches_the_clip_resampler(rate_hz):
    import soundfile as sf

    samples, file_rate_hz = sf.read(str(shared(SPEECH_48K)), dtype="float32", always_2d=True)
    speech = to_mono(samples[:2 * file_rate_hz + 123])  # an odd length: the ends must line up too
    mono = resample(speech, from_rate_hz=file_rate_hz, to_rate_hz=rate_hz)
    reference = resample(mono, from_rate_hz=rate_hz, to_rate_hz=SAMPLE_RATE_HZ)
    outputs = [_stream(StreamResampler(from_rate_hz=rate_hz), mono, chunk) for chunk in (1, 7, 333, 1920, len(mono))]
    for out in outputs:
        assert out.dtype == np.float32 and len(out) == len(reference)
        np.testing.assert_array_equal(out, outputs[0])  # the same to the bit, however it is cut
    # the same signal as the polyphase resampler, with no delay between them
    assert np.corrcoef(outputs[0], reference)[0, 1] > 0.99
    assert np.corrcoef(outputs[0][1:], reference[:-1])[0, 1] < 0.99


def test_the_stream_resampler_passes_its_own_rate_through():
    resampler = StreamResampler(from_rate_hz=SAMPLE_RATE_HZ)
    tone = _tone(SAMPLE_RATE_HZ, seconds=0.1)
    np.testing.assert_array_equal(_stream(resampler, tone, 100), tone)
