"""Small helpers the tests share: run the CLI, make tiny videos."""

from __future__ import annotations

import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout_s: float = 300):
    """Run `python -m lipsync_cli ARGS` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "lipsync_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout_s)


def assert_clean_error(proc, *needles: str) -> None:
    """A user mistake: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n.lower() in err.lower(), err


def make_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Write BGR frames as an H.264 MP4 with the project's writer."""
    from lipsync_cli.media.video import Mp4Writer

    h, w = frames[0].shape[:2]
    with Mp4Writer(path, fps=Fraction(fps), width=w, height=h) as writer:
        for f in frames:
            writer.write_frame(f)
    return path


def make_shadowed_models(tmp_path: Path) -> Path:
    """A models folder with alice.mp4 and alice.mov (the .mp4 is the one a name finds) and an
    invalid name ("my clip.mp4"); returns the folder."""
    models = tmp_path / "models"
    models.mkdir()
    make_video(models / "alice.mp4", [np.full((64, 64, 3), 128, np.uint8)] * 5)
    make_video(tmp_path / "wide.mp4", [np.full((64, 96, 3), 128, np.uint8)] * 5).rename(models / "alice.mov")
    make_video(models / "my clip.mp4", [np.full((64, 64, 3), 128, np.uint8)] * 5)
    return models


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    """Poll `condition()` every 20 ms until it is true or `timeout_s` has passed; its last value."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
