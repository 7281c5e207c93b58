"""Shared bits of the benchmarks: paths to the real media and a small table printer."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SPEAKER_VIDEO = SHARED_DATA / "speaker_man_1080x1920_25fps.mp4"
DRAWN_VIDEO = SHARED_DATA / "illustrated_704x1216_25fps.mp4"
SPEECH_20S = SHARED_DATA / "speech_16k_mono_20s.wav"
SAMPLE_VIDEO = REPO / "samples" / "avatar.mp4"


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"{path} is missing: the benchmarks read real media from ../shared/data")
    return path


def show(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
