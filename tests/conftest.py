"""Shared test fixtures: real media paths, one model cache per test session, small generated WAVs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_VIDEO = REPO / "samples" / "avatar.mp4"
SAMPLE_SPEECH = REPO / "samples" / "speech.wav"
SPEAKER_VIDEO = SHARED_DATA / "speaker_man_1080x1920_25fps.mp4"
DRAWN_VIDEO = SHARED_DATA / "illustrated_704x1216_25fps.mp4"
SPEECH_16K = SHARED_DATA / "speech_16k_mono_20s.wav"
SPEECH_44K = SHARED_DATA / "speech_44k_stereo_7s.wav"
SPEECH_48K = SHARED_DATA / "speech_48k_stereo_8s.wav"


def shared(path: Path) -> Path:
    """A file from ../shared/data, or skip the test with the reason."""
    if not path.exists():
        pytest.skip(f"real media {path.name} not found: ../shared/data is missing on this machine")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One model cache for the whole session, so each model is prepared once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def store(cache_dir):
    from lipsync_cli.media.store import ModelStore

    return ModelStore(cache_dir=cache_dir)


@pytest.fixture(scope="session")
def sample_model(store):
    return store.get(SAMPLE_VIDEO)


@pytest.fixture(scope="session")
def smiler_video(tmp_path_factory) -> Path:
    """A still avatar whose lips are apart: the talking speaker's first frame (a smile showing his
    teeth), animated for 2 s as bench/avatars.py animates the stills of ../shared/data."""
    import cv2

    from lipsync_cli.media.video import iter_frames

    sys.path.insert(0, str(REPO / "bench"))
    from avatars import neutral_avatar

    work = tmp_path_factory.mktemp("smiler")
    cv2.imwrite(str(work / "smile.png"), next(iter_frames(shared(SPEAKER_VIDEO))))
    return neutral_avatar(work / "smile.png", work / "smiler.mp4", seconds=2)


@pytest.fixture(scope="session")
def small_talker_video(tmp_path_factory) -> Path:
    """A talking video with few and modest openings and a small face: the talking speaker's first 4 s,
    shrunk to 40% in a 1080x1920 frame (a person further from the camera)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    out = tmp_path_factory.mktemp("small_talker") / "small_talker.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-t", "4", "-i", str(shared(SPEAKER_VIDEO)),
                    "-vf", "scale=432:768,pad=1080:1920:324:200:color=0x506070", "-an", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


def espeak_wav(path: Path, text: str, *, rate_wpm: int = 160) -> Path:
    """Speech made with espeak-ng into `path` (skips the test when espeak-ng is not installed)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(rate_wpm), "-w", str(path), text], check=True)
    return path


def write_wav(path: Path, samples: np.ndarray, rate_hz: int, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    sf.write(str(path), samples, rate_hz, subtype=subtype)
    return path


# the markers pyproject.toml declares, given by the virtual stand-in a test uses (tests/live_support.py),
# so `-m "not display"` leaves out exactly the tests that start Xvfb
_MARK_BY_FIXTURE = {"xvfb": "display", "pulse": "audio"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, mark in _MARK_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
