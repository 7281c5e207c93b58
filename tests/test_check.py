"""`lipsync check`: the A/V offset of real talking-head footage, and one clean line when it cannot measure."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SAMPLE_SPEECH, SAMPLE_VIDEO, SPEAKER_VIDEO, shared, write_wav
from helpers import assert_clean_error, make_video, run_cli

CLIP_S = 8  # the first 8 s of the speaker: enough speech for a clear peak, quick to track
DELAY_MS = 200  # 5 frames at 25 fps
JSON_KEYS = {"offset_frames", "offset_ms", "fps", "frames", "speech_frames", "face_found", "peak_correlation",
             "margin", "correlations", "in_sync", "reliable", "ambiguous"}


def check_json(*args) -> dict:
    proc = run_cli("check", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def delayed_speaker(tmp_path_factory) -> Path:
    """The speaker's first CLIP_S seconds at half size, its own sound delayed by DELAY_MS (silence first)."""
    import av

    from lipsync_cli.media.audio import load_audio
    from lipsync_cli.media.video import Mp4Writer, iter_frames, probe_video

    video = shared(SPEAKER_VIDEO)
    info = probe_video(video)
    clip = load_audio(video)
    rate = clip.original_rate_hz
    sound = clip.original[:CLIP_S * rate]
    sound = np.concatenate([np.zeros((DELAY_MS * rate // 1000, sound.shape[1]), np.float32), sound])
    path = tmp_path_factory.mktemp("check") / "delayed.mp4"
    n_frames = int(CLIP_S * info.fps)
    with Mp4Writer(path, fps=info.fps, width=info.width // 2, height=info.height // 2, audio_rate_hz=rate,
                   audio_channels=sound.shape[1]) as writer:
        for i, frame in enumerate(iter_frames(video)):
            if i >= n_frames:
                break
            writer.write_frame(cv2.resize(frame, (info.width // 2, info.height // 2), interpolation=cv2.INTER_AREA))
        writer.write_audio(sound)
    with av.open(str(path)) as container:  # the delay is in the samples, not in a container start time
        assert [s.start_time or 0 for s in container.streams] == [0, 0]
    return path


def test_real_speaker_in_sync():
    result = check_json(shared(SPEAKER_VIDEO), "--max-seconds", CLIP_S)
    assert set(result) >= JSON_KEYS
    assert result["frames"] == CLIP_S * 25 and result["fps"] == 25
    assert abs(result["offset_frames"]) <= 1, result
    assert abs(result["offset_ms"] - 40.0 * result["offset_frames"]) <= 20.0  # refined within the frame
    assert result["face_found"] > 0.95 and result["reliable"], result


def test_sound_delayed_200_ms_is_five_frames_early(delayed_speaker):
    result = check_json(delayed_speaker)
    # the sound comes 200 ms late, so the mouth moves 5 frames BEFORE its sound: negative
    assert abs(result["offset_frames"] - (-DELAY_MS // 40)) <= 1, result
    assert not result["in_sync"]


def test_human_output_names_the_offset_and_warns(delayed_speaker):
    proc = run_cli("check", delayed_speaker)
    assert proc.returncode == 0, proc.stderr  # a measured offset is a result, not a failure
    assert "before its sound" in proc.stdout and "ms" in proc.stdout, proc.stdout
    assert "out of sync" in proc.stderr and "advance the sound" in proc.stderr, proc.stderr


def test_too_little_speech_to_tell_the_offset_from_its_echo_is_uncertain():
    """The speaker's first 2 s (33 speech frames): two offsets match within 0.02, well inside the
    noise of so few frames, and the check says so; from 3 s on the peak stands clear."""
    assert check_json(shared(SPEAKER_VIDEO), "--max-seconds", 2)["ambiguous"]
    assert not check_json(shared(SPEAKER_VIDEO), "--max-seconds", 3)["ambiguous"]
    proc = run_cli("check", shared(SPEAKER_VIDEO), "--max-seconds", 2)
    assert proc.returncode == 0, proc.stderr
    assert "uncertain" in proc.stderr and "longer clip" in proc.stderr, proc.stderr


def test_no_face(tmp_path):
    video = make_video(tmp_path / "wall.mp4", [np.full((96, 96, 3), 128, np.uint8)] * 50)
    assert_clean_error(run_cli("check", video, SAMPLE_SPEECH), "VideoError", "no face in any of 50 frames")


def test_video_without_sound_track():
    assert_clean_error(run_cli("check", SAMPLE_VIDEO), "AudioError", "no sound track")


def test_silent_sound(tmp_path):
    silence = write_wav(tmp_path / "silence.wav", np.zeros(16000 * 3, np.float32), 16000)
    assert_clean_error(run_cli("check", SAMPLE_VIDEO, silence), "AudioError", "silent")


@pytest.mark.parametrize("content", [b"", b"not a video at all\n" * 100])
def test_unreadable_file(tmp_path, content):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    assert_clean_error(run_cli("check", bad), "VideoError", "broken.mp4")


def test_missing_file(tmp_path):
    assert_clean_error(run_cli("check", tmp_path / "nope.mp4"), "no such file")


def test_file_without_video_stream():
    assert_clean_error(run_cli("check", SAMPLE_SPEECH), "VideoError", "no video stream")


def test_a_clip_too_short_to_measure_says_so_in_frames_and_seconds(tmp_path):
    from lipsync_cli.media.audio import load_audio
    from lipsync_cli.media.video import iter_frames

    face = next(iter_frames(SAMPLE_VIDEO))
    short = make_video(tmp_path / "short.mp4", [face] * 15)  # 0.6 s: the face is in every one of its frames
    assert_clean_error(run_cli("check", short, SAMPLE_SPEECH), "VideoError", "15 frames are too few to measure",
                       "at least 25 (1.0 s)")
    # at 60 fps the 25 frames the check needs are 0.4 s, not "0 s"
    fast = make_video(tmp_path / "fast.mp4", [face] * 60, fps=60)
    clip = load_audio(SAMPLE_SPEECH)
    word = write_wav(tmp_path / "word.wav", clip.samples[8000:13600], 16000)  # 0.35 s of speech
    assert_clean_error(run_cli("check", fast, word), "AudioError", "frames hold speech", "at least 25 (0.4 s)")
