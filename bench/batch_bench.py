"""Batch benchmark: clips per minute on a local Dask cluster of 1 and 2 worker processes, and the
per-job overhead of the cluster path against a plain render of the same clip in this process.

Short espeak-ng clips onto the bundled sample avatar. Each cluster is started first (its start time
is shown apart) and warmed with one job per worker, so the model is prepared and loaded before the
timed batch. The overhead is the median, over a few runs of one clip, of (submit -> MP4 written by
this process, through a warm 1-worker cluster) minus (a warm in-process `render` of that clip).

    python bench/batch_bench.py [--clips 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av, as in the command line)

from common import SAMPLE_VIDEO, show
from lipsync_cli.media.audio import load_audio
from lipsync_cli.media.store import ModelStore
from lipsync_cli.render.cluster import local_cluster, run_on_cluster
from lipsync_cli.render.jobs import Job
from lipsync_cli.render.pipeline import RenderOptions, render

SENTENCES = ["The meeting starts at nine tomorrow morning.", "Please remember to bring your notes.",
             "We will look at the numbers together.", "Thank you all for coming today."]


def make_clips(folder: Path, n: int) -> list[Path]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed to make the clips (apt-get install espeak-ng)")
    clips = []
    for i in range(n):
        path = folder / f"clip{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), SENTENCES[i % len(SENTENCES)]], check=True)
        clips.append(path)
    return clips


def jobs(clips: list[Path], out: Path, tag: str) -> list[Job]:
    return [Job(audio=c, output=out / f"{tag}-{c.stem}.mp4") for c in clips]


def run_jobs(client, job_list: list[Job], *, options: RenderOptions, store: ModelStore, cache: Path) -> float:
    t0 = time.perf_counter()
    results = run_on_cluster(client, job_list, options=options, store=store, cache_dir=cache)
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"a job failed: {failed[0]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="clips in each timed batch")
    parser.add_argument("--repeats", type=int, default=3, help="runs of one clip for the overhead")
    args = parser.parse_args()
    options = RenderOptions(model=str(SAMPLE_VIDEO))
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cache, out = tmp / "cache", tmp / "out"
        out.mkdir()
        clips = make_clips(tmp, args.clips)
        store = ModelStore(cache_dir=cache)
        speech_s = sum(load_audio(c).duration_s for c in clips)

        # a plain render in this process, warm (model prepared and loaded, first render done)
        render(clips[0], out / "warm.mp4", options=options, store=store)
        local_s = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            render(clips[0], out / f"local{i}.mp4", options=options, store=store)
            local_s.append(time.perf_counter() - t0)

        rows, per_minute = [], {}
        for n_workers in (1, 2):
            t0 = time.perf_counter()
            with local_cluster(n_workers) as client:
                start_s = time.perf_counter() - t0
                warm_s = run_jobs(client, jobs(clips[:n_workers], out, f"warm{n_workers}"), options=options,
                                  store=store, cache=cache)
                batch_s = run_jobs(client, jobs(clips, out, f"w{n_workers}"), options=options, store=store,
                                   cache=cache)
                per_minute[n_workers] = 60.0 * len(clips) / batch_s
                rows.append((f"{n_workers} worker{'s' if n_workers > 1 else ''}",
                             f"{per_minute[n_workers]:.1f} clips/min ({len(clips)} clips in {batch_s:.1f} s; "
                             f"cluster start {start_s:.1f} s, warm-up {warm_s:.1f} s)"))
                if n_workers == 1:
                    cluster_s = [run_jobs(client, jobs(clips[:1], out, f"one{i}"), options=options, store=store,
                                          cache=cache) for i in range(args.repeats)]
        overhead_s = statistics.median(cluster_s) - statistics.median(local_s)
        rows += [("2 / 1 workers", f"{per_minute[2] / per_minute[1]:.2f}x"),
                 ("one clip, in process", f"{statistics.median(local_s):.2f} s (median of {args.repeats})"),
                 ("one clip, via cluster", f"{statistics.median(cluster_s):.2f} s (median of {args.repeats})"),
                 ("per-job overhead", f"{overhead_s:+.2f} s ({100 * overhead_s / statistics.median(local_s):+.0f}%)")]
        rows.insert(0, ("speech", f"{speech_s:.1f} s in {len(clips)} clips"))
        show(rows)


if __name__ == "__main__":
    main()
