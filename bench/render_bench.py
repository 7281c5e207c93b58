"""Render benchmark: 15 s of speech onto the 1080x1920 speaker at 25 and 30 fps, a 720p copy and the sample.

For each case it times `render` (embedded gRPC service, compositing, H.264 + AAC) in a fresh
process, and in the same run `ffmpeg -i video -an -c:v libx264` of the same number of frames with
the render's own encoder settings (DEFAULT_PRESET, DEFAULT_CRF, yuv420p), and prints the ratio
render / transcode (goal <= 1.2), the speed as a multiple of real time, and the render process's
peak resident memory (goal < 1 GB at 1080x1920). Each case runs `--repeat` times; the machine may
be shared, so the table gives the range.

The 30 fps case is made once from the 25 fps speaker (`ffmpeg -r 30`, HEVC like a phone's) and
kept, with the prepared caches, in --work-dir (never in the repository).

    python bench/render_bench.py [--repeat 2] [--cases 25,30,720,sample] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av, see media/video.py)

from common import REPO, SAMPLE_VIDEO, SHARED_DATA, SPEAKER_VIDEO, need, show
from lipsync_cli.core.timing import frame_count
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.media.video import DEFAULT_CRF, DEFAULT_PRESET, Mp4Writer, iter_frames, probe_video

SPEECH_15S = SHARED_DATA / "speech_44k_stereo_15s_b.wav"
GOAL_RATIO = 1.2  # render time / transcode time
GOAL_PEAK_MB = 1024  # render peak resident memory at 1080x1920
SPEAKER_30FPS_NAME = "speaker_man_1080x1920_30fps.mp4"

CHILD = """
import json, resource, sys, time
from pathlib import Path
import cv2
from lipsync_cli.render.pipeline import RenderOptions, render
from lipsync_cli.media.store import ModelStore
store = ModelStore(cache_dir=Path(sys.argv[3]))
store.get(Path(sys.argv[1]))  # prepared beforehand; timing starts after loading
cpu0 = time.process_time()
t0 = time.perf_counter()
s = render(Path(sys.argv[2]), Path(sys.argv[4]), options=RenderOptions(model=sys.argv[1]), store=store)
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - t0, "frames": s.frames, "fallbacks": s.fallbacks,
                  "peak_rss_kb": u.ru_maxrss, "cpu_s": u.ru_utime + u.ru_stime - cpu0}))
"""


def transcode_s(video: Path, n_frames: int, out: Path) -> tuple[float, float]:
    """ffmpeg decode + libx264 re-encode of the video's first n_frames (looping it if shorter), video
    only, with the render's own preset and CRF: (wall seconds, CPU seconds)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(video),
           "-frames:v", str(n_frames), "-an", "-c:v", "libx264", "-preset", DEFAULT_PRESET,
           "-crf", str(DEFAULT_CRF), "-pix_fmt", "yuv420p", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall_s, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def speaker_30fps(work: Path) -> Path:
    """The 25 fps speaker resampled to 30 fps as HEVC, made once and kept in `work`."""
    out = work / SPEAKER_30FPS_NAME
    if not out.exists():
        tmp = out.with_suffix(".part.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(need(SPEAKER_VIDEO)), "-r", "30",
                        "-c:v", "libx265", "-preset", "fast", "-crf", "24", "-tag:v", "hvc1",
                        "-x265-params", "log-level=error", "-c:a", "copy", str(tmp)], check=True)
        tmp.rename(out)
    return out


def scaled_copy(video: Path, height: int, work: Path) -> Path:
    """The video scaled to `height` (H.264, crf 18), made once and kept in `work`."""
    info = probe_video(video)
    width = round(info.width * height / info.height / 2) * 2
    out = work / f"{video.stem}_{width}x{height}.mp4"
    if not out.exists():
        with Mp4Writer(out, fps=info.fps, width=width, height=height, crf=18) as writer:
            for f in iter_frames(video):
                writer.write_frame(cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA))
    return out


def _child_env() -> dict[str, str]:
    # this checkout's package, unless PYTHONPATH names another one (to compare two trees)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)
    return env


def run_once(video: Path, speech: Path, work: Path, n: int) -> tuple[dict, tuple[float, float]]:
    # the render runs first, in a fresh process, so its peak memory is its own
    proc = subprocess.run([sys.executable, "-c", CHILD, str(video), str(speech), str(work / "cache"),
                           str(work / "render_out.mp4")], check=True, capture_output=True, text=True, cwd=work,
                          env=_child_env())
    base_s = transcode_s(video, n, work / "transcode_out.mp4")
    return json.loads(proc.stdout.strip().splitlines()[-1]), base_s


def bench(video: Path, speech: Path, work: Path, repeat: int) -> list[tuple[str, str]]:
    subprocess.run([sys.executable, "-m", "lipsync_cli", "prepare", str(video), "--cache-dir", str(work / "cache")],
                   check=True, capture_output=True)
    info = probe_video(video)
    duration_s = load_audio(speech).duration_s
    n = frame_count(int(duration_s * SAMPLE_RATE_HZ), fps=info.fps, sample_rate_hz=SAMPLE_RATE_HZ)
    runs = [run_once(video, speech, work, n) for _ in range(repeat)]
    render_s = [r["seconds"] for r, _ in runs]
    base_s = [b for _, (b, _) in runs]
    ratios = [r / b for r, b in zip(render_s, base_s)]
    # CPU seconds: steadier than wall time on a shared machine, and what a 2-core box is short of
    cpu_ratios = [r["cpu_s"] / c for r, (_, c) in runs]
    cpu_runs = ", ".join(f"{r['cpu_s']:.0f}/{c:.0f}" for r, (_, c) in runs)
    peak_mb = max(r["peak_rss_kb"] for r, _ in runs) / 1024
    r0 = runs[0][0]

    def span(values: list[float], fmt: str) -> str:
        lo, hi = min(values), max(values)
        return format(lo, fmt) if len(values) == 1 else f"{format(lo, fmt)}-{format(hi, fmt)}"

    case = f"{info.width}x{info.height} {float(info.fps):g} fps"
    return [
        (f"{case} render", f"{span(render_s, '.1f')} s for {r0['frames']} frames = "
                           f"{span([duration_s / s for s in render_s], '.2f')}x real time ({r0['fallbacks']} fallbacks)"),
        (f"{case} transcode", f"{span(base_s, '.1f')} s (ffmpeg, same frames, libx264 {DEFAULT_PRESET} crf {DEFAULT_CRF})"),
        (f"{case} ratio", f"{span(ratios, '.2f')} (goal <= {GOAL_RATIO}; per run: "
                          f"{', '.join(f'{x:.2f}' for x in ratios)})"),
        (f"{case} CPU ratio", f"{span(cpu_ratios, '.2f')} (render CPU s / transcode CPU s: {cpu_runs})"),
        (f"{case} peak memory", f"{peak_mb:.0f} MB (goal < {GOAL_PEAK_MB} MB at 1080x1920)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each case (the table shows the range)")
    parser.add_argument("--cases", default="25,30,720,sample", help="any of 25, 30, 720, sample")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the 30 fps and 720p copies and the caches are kept (default: a fresh temp dir)")
    args = parser.parse_args()
    speech = need(SPEECH_15S)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        videos = {"25": lambda: need(SPEAKER_VIDEO), "30": lambda: speaker_30fps(work),
                  "720": lambda: scaled_copy(need(SPEAKER_VIDEO), 1280, work), "sample": lambda: need(SAMPLE_VIDEO)}
        rows: list[tuple[str, str]] = []
        for case in args.cases.split(","):
            rows += bench(videos[case.strip()](), speech, work, args.repeat)
            show(rows[-5:])
            sys.stdout.flush()
    print()
    show(rows)


if __name__ == "__main__":
    main()
