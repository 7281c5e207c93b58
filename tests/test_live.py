"""`lipsync live` in a real window (Xvfb) with virtual sound devices (PulseAudio null sinks): what the
user sees, hears and records, and how the session lives through a service that goes away."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_SPEECH, SAMPLE_VIDEO, write_wav
from helpers import assert_clean_error, run_cli
from live_support import (REPO, SYNC_TOLERANCE_FRAMES, best_match, checked_offset_frames,  # noqa: F401
                          find_in_screen, frame_loudness, mouth_change, mouth_lag_frames, pulse, real_speech,
                          recording, screenshot, start_session, windows_on, xvfb)
from lipsync_cli.media.audio import load_audio
from test_render import check_mp4

SPEECH_END_S = 3.2  # samples/speech.wav: speech from 0.3 to 2.6 s, then a pause


@pytest.fixture
def env(xvfb, pulse):
    """The environment of a user at a desktop with a microphone and speakers (all virtual)."""
    return {**os.environ, **pulse, "DISPLAY": xvfb}


def _speech_then_silence(tmp_path: Path, silence_s: float) -> tuple[Path, np.ndarray]:
    """The sample's first sentence and `silence_s` of silence, as a 16 kHz WAV, and its samples."""
    samples = load_audio(SAMPLE_SPEECH).samples[: int(SPEECH_END_S * 16000)]
    samples = np.concatenate([samples, np.zeros(int(silence_s * 16000), np.float32)])
    return write_wav(tmp_path / "speech.wav", samples, 16000), samples


def _check_mouth(frames, audio, rate_hz, model) -> None:
    """The mouth moves where the recording is loud and is the model's own where it is silent."""
    change = mouth_change(frames, model)
    loudness = frame_loudness(audio, rate_hz, len(frames))
    loud, silent = change[loudness > 0.05], change[loudness < 1e-3]
    assert len(loud) >= 10 and len(silent) >= 8, (len(loud), len(silent))
    assert np.median(loud) > 3 * np.median(silent) + 1.0, (np.median(loud), np.median(silent))


def test_window_shows_the_avatar_speaking_the_file_and_the_record_holds_it(env, tmp_path, cache_dir, sample_model):
    clip, samples = _speech_then_silence(tmp_path, 3.0)
    out = tmp_path / "live.mp4"
    session = start_session(env, cache_dir, input=clip, record=out, model=str(SAMPLE_VIDEO))
    assert session.first_frame.wait(30), session.wait().stderr
    # the window shows the avatar while the session runs: the model's frame is on the screen (looked
    # for again while the session lasts: a loaded machine may be slow to paint the window)
    found, screen = 0.0, None
    while found <= 0.6 and session.proc.poll() is None:
        time.sleep(0.5)
        screen = screenshot(env["DISPLAY"], tmp_path / "window.png")
        found = find_in_screen(screen, sample_model.frame(0))
    windows = windows_on(env["DISPLAY"]) if found <= 0.6 else ""  # what the screen held, should it fail
    session.wait(30)
    assert session.proc.returncode == 0, session.stderr
    assert screen is not None and found > 0.6, \
        f"the avatar never showed on the screen while the session ran (match {found:.2f}); {windows}; {session.stderr}"
    assert screen.std() > 20
    summary = session.summary
    # drops come from the machine stalling (bench/live_bench.py holds the goal of 0): a loaded machine drops
    # some (one full run here stalled ~2 s: 47 dropped against 115 shown); a scheduler that fails drops most
    assert summary["frames_shown"] > 60 and summary["frames_dropped"] <= summary["frames_shown"] // 2, summary
    assert summary["fallbacks"] == 0, summary
    assert summary["latency_p95_ms"] < 250, summary
    # the file stopped the session by itself shortly after it ended
    assert len(samples) / 16000 < summary["seconds"] < len(samples) / 16000 + 5
    frames, audio, rate = recording(out)
    check_mp4(out, fps=25, duration_s=len(frames) / 25, width=576, height=768)
    # the recorded sound is the input, from the first frame on
    offset, ncc = best_match(audio, _resampled(samples[: 2 * 16000], rate))
    assert ncc > 0.95 and offset < rate // 25, (offset, ncc)
    _check_mouth(frames, audio, rate, sample_model)
    _check_in_sync(frames, audio, rate, sample_model)


def _check_in_sync(frames, audio, rate_hz, model) -> None:
    """The recorded mouth moves with its recorded sound, within one frame."""
    lag, r = mouth_lag_frames(frames, audio, rate_hz, model)
    assert abs(lag) <= 1 and r > 0.5, (lag, r)


SYNC_SPEECH_S = 8.0  # real speech: enough for `lipsync check` to measure the offset reliably


@pytest.mark.parametrize("speakers", [False, True], ids=["no-sound-device", "null-sink"])
def test_a_recording_keeps_the_mouth_on_its_sound(speakers, xvfb, pulse, tmp_path, cache_dir):
    """--input --record, without any sound device and with PulseAudio's null sink as the speakers: the
    recording's mouth is on its sound within one frame, as `lipsync check` measures it."""
    sound = {**pulse} if speakers else {"PULSE_SERVER": "unix:/nonexistent"}
    env = {**os.environ, **sound, "DISPLAY": xvfb}
    clip = write_wav(tmp_path / "speech.wav", real_speech(SYNC_SPEECH_S, 16000), 16000)
    out = tmp_path / "sync.mp4"
    session = start_session(env, cache_dir, input=clip, record=out, model=str(SAMPLE_VIDEO)).wait(90)
    assert session.proc.returncode == 0, session.stderr
    assert any("no sound output" in m for m in session.messages) != speakers, session.messages
    assert abs(checked_offset_frames(out)) <= SYNC_TOLERANCE_FRAMES
    if speakers:  # the sound waits for its mouth: picture and sound come out together (a loose bound: CI is slow)
        assert abs(session.summary["latency_p50_ms"]) < 250, session.summary


def test_microphone_drives_the_mouth_and_q_quits(env, tmp_path, cache_dir, sample_model):
    listing = subprocess.run([sys.executable, "-c", "from lipsync_cli.live.audio_io import list_devices; "
                              "print([d.name for d in list_devices() if d.inputs])"],
                             env=env, cwd=REPO, capture_output=True, text=True)
    assert "pulse" in listing.stdout or "default" in listing.stdout, listing
    out = tmp_path / "mic.mp4"
    session = start_session(env, cache_dir, record=out, model=str(SAMPLE_VIDEO), duration_s=60)
    assert session.first_frame.wait(30), session.wait().stderr
    clip, samples = _speech_then_silence(tmp_path, 0.0)
    subprocess.run(["paplay", "-d", "mic", str(clip)], env=env, check=True, timeout=30)
    time.sleep(1.5)  # the mouth comes to rest
    subprocess.run(["xdotool", "search", "--sync", "--name", "lipsync live", "windowfocus",
                    "key", "q"], env=env, check=True, timeout=15)
    session.wait(15)
    assert session.proc.returncode == 0, session.stderr
    assert session.summary["seconds"] < 30  # q ended it, not the 60 s limit
    frames, audio, rate = recording(out)
    offset, ncc = best_match(audio, _resampled(samples[: 2 * 16000], rate))
    assert ncc > 0.8, ncc  # the microphone's sound, through PulseAudio's resampler
    _check_mouth(frames, audio, rate, sample_model)


def _resampled(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    from lipsync_cli.media.audio import resample

    return resample(samples, from_rate_hz=16000, to_rate_hz=rate_hz)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_session_survives_the_service_going_away(env, tmp_path, store, sample_model):
    from lipsync_cli.rpc.service import create_server

    speech = load_audio(SAMPLE_SPEECH).samples
    clip = write_wav(tmp_path / "long.wav", np.concatenate([speech, speech]), 16000)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    server, _ = create_server(address, store=store)
    store.register(SAMPLE_VIDEO)
    out = tmp_path / "restart.mp4"
    session = start_session(env, store.cache_dir, input=clip, record=out, model=str(SAMPLE_VIDEO),
                            server=address, duration_s=9.0)
    try:
        assert session.first_frame.wait(30), session.wait().stderr
        time.sleep(1.5)
        server.stop(grace=None)
        time.sleep(1.0)
        screenshot(env["DISPLAY"], tmp_path / "away.png")  # to look at by hand (pytest keeps its tmp_path)
        time.sleep(0.5)
        server, _ = create_server(address, store=store)
        session.wait(40)
    finally:
        server.stop(grace=None)
    assert session.proc.returncode == 0, session.stderr
    summary = session.summary
    assert summary["reconnects"] >= 1 and summary["idle_frames"] >= 10, summary
    assert any("reconnecting" in m for m in session.messages), session.messages
    assert "the lip-sync service is back" in session.messages, session.messages
    frames, audio, rate = recording(out)
    assert len(frames) >= 25 * 6
    # after the restart the mouth speaks again: the last seconds hold speech frames that differ from the model
    change = mouth_change(frames, sample_model)
    loudness = frame_loudness(audio, rate, len(frames))
    tail = slice(len(frames) - 50, len(frames))
    assert np.median(change[tail][loudness[tail] > 0.05]) > 3.0, change[tail]


def test_no_display_is_one_clear_line(tmp_path, cache_dir):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    clip, _ = _speech_then_silence(tmp_path, 0.1)
    started = time.monotonic()
    session = start_session(env, cache_dir, input=clip).wait(30)
    assert session.proc.returncode == 1 and time.monotonic() - started < 20
    assert session.stderr.strip().startswith("DeviceError: no display ($DISPLAY is not set)"), session.stderr
    assert len(session.stderr.strip().splitlines()) == 1 and "Traceback" not in session.stderr


def test_cli_live_without_a_display(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = run_cli("live", "--input", SAMPLE_SPEECH, env=env, timeout_s=60)
    assert_clean_error(proc, "DeviceError", "DISPLAY")


def test_cli_live_with_a_server_without_port_is_one_clean_line():
    # DISPLAY set (no window opens: the server is checked first) so the error is about --server
    env = {**os.environ, "DISPLAY": os.environ.get("DISPLAY") or ":0"}
    proc = run_cli("live", "--server", "localhost", "--duration", "1", env=env, timeout_s=60)
    assert_clean_error(proc, "ServiceError", "localhost", "HOST:PORT")


def test_no_speakers_is_said_once_and_the_session_goes_on(tmp_path, cache_dir):
    env = {**os.environ, "PULSE_SERVER": "unix:/nonexistent"}
    env.pop("DISPLAY", None)
    outputs = subprocess.run([sys.executable, "-c", "from lipsync_cli.live.audio_io import list_devices; "
                              "print(sum(d.outputs > 0 for d in list_devices()))"],
                             env=env, cwd=REPO, capture_output=True, text=True)
    if outputs.stdout.strip() != "0":
        pytest.skip("this machine has a real sound card: it cannot be without speakers")
    clip, _ = _speech_then_silence(tmp_path, 0.2)
    session = start_session(env, cache_dir, input=clip, window=False).wait(30)
    assert session.proc.returncode == 0, session.stderr
    said = [m for m in session.messages if "no sound output" in m]
    assert len(said) == 1, session.messages
    assert session.summary["frames_shown"] > 50
