"""Render benchmark: 20 s of speech onto the 1080x1920 speaker, and onto a 720p copy.

For each size it times `render` (embedded gRPC service, compositing, H.264 + AAC) and, in the same
run, a plain decode-and-re-encode of the same number of model frames with the same encoder
settings, and prints the ratio (goal <= 1.2), the speed as a multiple of real time, and the peak
resident memory of the render process (goal < 1 GB at 1080x1920).

    python bench/render_bench.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401

from common import REPO, SPEAKER_VIDEO, SPEECH_20S, need, show
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.core.timing import frame_count
from lipsync_cli.media.video import Mp4Writer, iter_frames, probe_video

CHILD = """
import json, resource, sys, time
from pathlib import Path
import cv2
from lipsync_cli.render.pipeline import RenderOptions, render
from lipsync_cli.media.store import ModelStore
store = ModelStore(cache_dir=Path(sys.argv[3]))
store.get(Path(sys.argv[1]))  # prepared beforehand; timing starts after loading
t0 = time.perf_counter()
s = render(Path(sys.argv[2]), Path(sys.argv[4]), options=RenderOptions(model=sys.argv[1]), store=store)
print(json.dumps({"seconds": time.perf_counter() - t0, "frames": s.frames, "fallbacks": s.fallbacks,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def transcode_s(video: Path, n_frames: int, out: Path) -> float:
    """Decode the model video (looping, re-opening it at its end) and re-encode n_frames with the same settings."""
    info = probe_video(video)
    t0 = time.perf_counter()
    written = 0
    with Mp4Writer(out, fps=info.fps, width=info.width, height=info.height) as writer:
        while written < n_frames:
            for frame in iter_frames(video):
                writer.write_frame(frame)
                written += 1
                if written == n_frames:
                    break
    return time.perf_counter() - t0


def scaled_copy(video: Path, height: int, out: Path) -> Path:
    info = probe_video(video)
    width = round(info.width * height / info.height / 2) * 2
    with Mp4Writer(out, fps=info.fps, width=width, height=height, crf=18) as writer:
        for f in iter_frames(video):
            writer.write_frame(cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA))
    return out


def bench(video: Path, speech: Path, tmp: Path) -> list[tuple[str, str]]:
    subprocess.run([sys.executable, "-m", "lipsync_cli", "prepare", str(video), "--cache-dir", str(tmp)],
                   check=True, capture_output=True)
    info = probe_video(video)
    duration_s = load_audio(speech).duration_s
    n = frame_count(int(duration_s * SAMPLE_RATE_HZ), fps=info.fps, sample_rate_hz=SAMPLE_RATE_HZ)
    # the render runs first, in a fresh process, so its peak memory is its own
    proc = subprocess.run([sys.executable, "-c", CHILD, str(video), str(speech), str(tmp), str(tmp / "out.mp4")],
                          check=True, capture_output=True, text=True, cwd=REPO)
    base_s = transcode_s(video, n, tmp / "baseline.mp4")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    size = f"{info.width}x{info.height}"
    return [
        (f"{size} render", f"{r['seconds']:.1f} s for {r['frames']} frames = {duration_s / r['seconds']:.2f}x real time"
                           f" ({r['fallbacks']} fallbacks)"),
        (f"{size} decode+re-encode", f"{base_s:.1f} s (same frames, libx264 veryfast crf 20)"),
        (f"{size} ratio", f"{r['seconds'] / base_s:.2f} (goal <= 1.2)"),
        (f"{size} peak memory", f"{r['peak_rss_kb'] / 1024:.0f} MB (goal < 1024 MB at 1080x1920)"),
    ]


def main() -> None:
    video, speech = need(SPEAKER_VIDEO), need(SPEECH_20S)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = bench(video, speech, tmp)
        rows += bench(scaled_copy(video, 1280, tmp / "speaker_720x1280.mp4"), speech, tmp)
    show(rows)


if __name__ == "__main__":
    main()
