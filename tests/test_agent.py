"""`lipsync live --agent openai` against a fake Realtime server (tests/fake_realtime.py) driven by the
real openai SDK: answers heard and mouthed, barge-in, and a server that fails."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_VIDEO, espeak_wav
from fake_realtime import FakeRealtime
from helpers import assert_clean_error, run_cli
from live_support import (SYNC_TOLERANCE_FRAMES, best_match, checked_offset_frames, frame_loudness,  # noqa: F401
                          mouth_change, pulse, real_speech, recording, screenshot, start_session, xvfb)
from lipsync_cli.live.agent import REALTIME_RATE_HZ, AnswerAudio, websocket_base_url
from lipsync_cli.media.audio import load_audio, resample, to_mono

LEAD_S = 2.0  # silence before the user speaks: the agent connects meanwhile


def _speech_24k(tmp_path: Path, name: str, text: str) -> np.ndarray:
    clip = load_audio(espeak_wav(tmp_path / f"{name}.wav", text))
    return resample(to_mono(clip.original), from_rate_hz=clip.original_rate_hz, to_rate_hz=REALTIME_RATE_HZ)


def _user_wav(tmp_path: Path, *parts: np.ndarray | float) -> Path:
    """The user's side as a 24 kHz WAV: speech arrays and silences (seconds), in order."""
    from conftest import write_wav

    pieces = [np.zeros(int(p * REALTIME_RATE_HZ), np.float32) if isinstance(p, float) else p for p in parts]
    return write_wav(tmp_path / "user.wav", np.concatenate(pieces), REALTIME_RATE_HZ)


@pytest.fixture
def env(xvfb, pulse):
    env = {**os.environ, **pulse, "DISPLAY": xvfb, "OPENAI_API_KEY": "sk-test-not-a-key"}
    env.pop("OPENAI_BASE_URL", None)
    return env


def test_answer_is_heard_mouthed_and_captioned(env, tmp_path, cache_dir, sample_model):
    question = _speech_24k(tmp_path, "question", "Hello, how are you?")
    answer = _speech_24k(tmp_path, "answer", "I am fine, thank you.")
    user = _user_wav(tmp_path, LEAD_S, question, 8.0)
    out = tmp_path / "agent.mp4"
    with FakeRealtime(answer, answer_text="I am fine, thank you.", user_text="Hello, how are you?") as fake:
        env["OPENAI_BASE_URL"] = fake.base_url
        session = start_session(env, cache_dir, input=user, record=out, model=str(SAMPLE_VIDEO), duration_s=10.0,
                                agent={})
        assert session.first_frame.wait(30), session.wait().stderr
        deadline = time.monotonic() + 15
        while not any(kind == "response.created" for _, _, kind in fake.sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the answer is playing, its caption on screen
        screenshot(env["DISPLAY"], tmp_path / "answer.png")  # to look at by hand (pytest keeps its tmp_path)
        session.wait(30)
    assert session.proc.returncode == 0, session.stderr
    session_config = fake.of_type("session.update")[0]["session"]
    assert session_config["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session_config["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    said = "".join(text for role, text, _ in session.transcripts if role == "assistant")
    assert said == "I am fine, thank you.", session.transcripts
    assert ("user", "Hello, how are you?", True) in session.transcripts
    assert not fake.of_type("conversation.item.truncate")  # nobody interrupted
    frames, audio, rate = recording(out)
    assert rate == REALTIME_RATE_HZ
    offset, ncc = best_match(audio, answer)
    assert ncc > 0.95, ncc  # the recording holds the answer, whole
    # the mouth moves while the answer plays and rests after it
    change = mouth_change(frames, sample_model)
    loud = frame_loudness(audio, rate, len(frames)) > 0.05
    first, last = offset * 25 // rate, (offset + len(answer)) * 25 // rate
    after = change[last + 8:]
    assert loud[first:last].sum() >= 10 and len(after) >= 8, (offset, ncc, len(frames), len(audio), first, last)
    assert np.median(change[first:last][loud[first:last]]) > 3 * np.median(after) + 1.0


def _first_match(haystack: np.ndarray, needle: np.ndarray, *, good: float = 0.95) -> tuple[int, float]:
    """Where `needle` first sits in `haystack`: the fake plays the same answer again after a barge-in,
    and the second copy may match a little better than the first."""
    offset, ncc = best_match(haystack, needle)
    while ncc > good:
        earlier, earlier_ncc = best_match(haystack[:max(0, offset - len(needle) // 2)], needle)
        if earlier_ncc <= good:
            break
        offset, ncc = earlier, earlier_ncc
    return offset, ncc


def test_barge_in_stops_the_answer_and_truncates_it(env, tmp_path, cache_dir, sample_model):
    question = _speech_24k(tmp_path, "question", "Tell me a story.")
    answer = _speech_24k(tmp_path, "answer", "Once upon a time there was a small dragon who lived far away "
                                             "in the mountains and loved to sing every morning.")
    interruption = _speech_24k(tmp_path, "stop", "Wait, stop please.")
    # the answer starts about 0.45 s after the question ends (the fake's VAD); the user talks 1.5 s into it
    user = _user_wav(tmp_path, LEAD_S, question, 1.9, interruption, 6.0)
    out = tmp_path / "barge.mp4"
    with FakeRealtime(answer, answer_text="Once upon a time") as fake:
        env["OPENAI_BASE_URL"] = fake.base_url
        session = start_session(env, cache_dir, input=user, record=out, model=str(SAMPLE_VIDEO), duration_s=12.0,
                                agent={}, window=False)
        session.wait(40)
    assert session.proc.returncode == 0, session.stderr
    truncates = fake.of_type("conversation.item.truncate")
    assert len(truncates) == 1, (session.messages, session.transcripts, [e.get("type") for _, _, e in fake.events][-30:], session.summary)
    assert truncates[0]["item_id"] == "answer1_1" and truncates[0]["content_index"] == 0
    played_ms = truncates[0]["audio_end_ms"]
    assert 700 < played_ms < 2600, played_ms
    frames, audio, rate = recording(out)
    offset, ncc = _first_match(audio, answer[: rate // 2])
    assert ncc > 0.95, ncc
    # the recording holds the answer up to what the server was told was played, then silence
    cut = offset + played_ms * rate // 1000
    tail = answer[cut - offset - rate // 2: cut - offset - rate // 20]
    assert abs(best_match(audio[: cut + rate // 10], tail)[0] - (cut - rate // 2)) < rate // 100
    # up to 1.5 s of silence, or less where the answer to the interruption starts (a slow machine starts late)
    again, ncc_again = best_match(audio[cut:], answer[: rate // 2])
    end = cut + (min(again, rate * 3 // 2) if ncc_again > 0.95 else rate * 3 // 2)
    assert end - cut > rate // 2, (again, ncc_again)
    rest = slice(cut + rate // 10, end)
    assert np.sqrt(np.mean(audio[rest] ** 2)) < 1e-3
    change = mouth_change(frames, sample_model)
    resting = change[(cut * 25 // rate) + 3: end * 25 // rate]
    speaking = change[offset * 25 // rate: cut * 25 // rate]
    assert np.median(resting) * 3 + 1.0 < np.median(speaking), (resting, speaking)


def test_error_event_and_dropped_socket_reconnect(env, tmp_path, cache_dir):
    question = _speech_24k(tmp_path, "question", "Are you there?")
    answer = _speech_24k(tmp_path, "answer", "Yes.")
    user = _user_wav(tmp_path, LEAD_S + 1.5, question, 6.0)
    with FakeRealtime(answer, answer_text="Yes.", misbehave={1: "error", 2: "drop"}) as fake:
        env["OPENAI_BASE_URL"] = fake.base_url
        session = start_session(env, cache_dir, input=user, model=str(SAMPLE_VIDEO), duration_s=11.0, agent={},
                                window=False)
        session.wait(40)
    assert session.proc.returncode == 0, session.stderr
    assert fake.connections >= 3, fake.connections
    messages = " ".join(session.messages)
    assert "fails on purpose" in messages and "connecting again" in messages, session.messages
    assert any(role == "assistant" and "Yes." in text for role, text, _ in session.transcripts)
    assert session.summary["frames_shown"] > 100


def test_missing_api_key_is_one_line_before_any_window(env, tmp_path, cache_dir):
    env.pop("OPENAI_API_KEY")
    user = _user_wav(tmp_path, 0.5)
    started = time.monotonic()
    session = start_session(env, cache_dir, input=user, agent={}).wait(30)
    assert session.proc.returncode == 1 and time.monotonic() - started < 20
    assert session.stderr.strip().startswith("AgentError: OPENAI_API_KEY is not set"), session.stderr
    assert len(session.stderr.strip().splitlines()) == 1


def test_cli_without_an_api_key_is_one_clean_line():
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["DISPLAY"] = os.environ.get("DISPLAY") or ":0"  # the key is checked before any window opens
    proc = run_cli("live", "--agent", "openai", "--duration", "1", env=env, timeout_s=60)
    assert_clean_error(proc, "AgentError", "OPENAI_API_KEY")


def test_websocket_url_follows_the_base_url():
    assert websocket_base_url("http://127.0.0.1:8080/v1") == "ws://127.0.0.1:8080/v1"
    assert websocket_base_url("https://api.example.com/v1") == "wss://api.example.com/v1"


def test_answer_audio_keeps_its_place_on_the_clock_across_an_interruption():
    answer = AnswerAudio()
    n = REALTIME_RATE_HZ // 50
    answer.add(np.ones(5 * n, np.float32), "a")
    ahead = answer.read_ahead(3 * n)
    assert len(ahead) == 3 * n
    block, _ = answer.read(1.0)
    assert block.min() == 1.0
    item, read = answer.interrupt()
    assert (item, read) == ("a", n)
    # the two blocks already given to the service stay, as silence; the rest is gone
    assert answer.read(1.0)[0].max() == 0.0 and answer.read(1.0)[0].max() == 0.0
    answer.add(np.full(n, 0.5, np.float32), "b")
    assert len(answer.read_ahead(10 * n)) == n
    assert answer.read(1.0)[0].max() == 0.5


AGENT_SYNC_SPEECH_S = 8.0  # a long answer of real speech: enough for `lipsync check` to be sure


def test_answer_recording_keeps_the_mouth_on_its_sound(env, tmp_path, cache_dir):
    """The agent's answer as recorded: its mouth on its sound within one frame (`lipsync check`), with
    speakers (PulseAudio's null sink) and a window, and no frame dropped."""
    question = _speech_24k(tmp_path, "question", "Read me something.")
    answer = real_speech(AGENT_SYNC_SPEECH_S, REALTIME_RATE_HZ)
    user = _user_wav(tmp_path, LEAD_S, question, AGENT_SYNC_SPEECH_S + 4.0)
    out = tmp_path / "agent_sync.mp4"
    with FakeRealtime(answer, answer_text="Something.", user_text="Read me something.") as fake:
        env["OPENAI_BASE_URL"] = fake.base_url
        session = start_session(env, cache_dir, input=user, record=out, model=str(SAMPLE_VIDEO), duration_s=90,
                                agent={})
        assert session.first_frame.wait(60), session.wait().stderr
        deadline = time.monotonic() + 30
        while not any(kind == "response.created" for _, _, kind in fake.sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(AGENT_SYNC_SPEECH_S + 2.0)  # the answer plays out, the mouth comes to rest
        subprocess.run(["xdotool", "search", "--sync", "--name", "lipsync live", "windowfocus", "key", "q"],
                       env=env, check=True, timeout=15)
        session.wait(30)
    assert session.proc.returncode == 0, session.stderr
    frames, audio, rate = recording(out)
    assert best_match(audio, answer[: rate])[1] > 0.95, (len(audio) / rate, session.transcripts, session.messages)
    assert abs(checked_offset_frames(out)) <= SYNC_TOLERANCE_FRAMES
    summary = session.summary
    assert abs(summary["latency_p50_ms"]) < 250, summary  # the answer's sound waits for its mouth
