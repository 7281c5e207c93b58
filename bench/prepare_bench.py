"""Prepare benchmark: the 20 s 1080x1920 HEVC speaker.

Prints prepare time over the video's duration (goal < 1.0 on 2 cores), the cache size, the time to
load a prepared model, and resident memory with 5 models loaded.

    python bench/prepare_bench.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import cv2  # noqa: F401
import psutil

from common import DRAWN_VIDEO, SAMPLE_VIDEO, SPEAKER_VIDEO, need, show
from lipsync_cli.media.cache import cache_path, prepare_model
from lipsync_cli.media.store import Model, ModelStore
from lipsync_cli.media.video import probe_video


def main() -> None:
    video = need(SPEAKER_VIDEO)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        duration_s = probe_video(video).duration_s
        t0 = time.perf_counter()
        result = prepare_model(video, cache_dir=tmp)
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = prepare_model(video, cache_dir=tmp)
        rerun_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        Model(video, result.cache)
        load_s = time.perf_counter() - t0
        # five models: the speaker, the drawn face, the sample and two copies of the speaker
        videos = [video, need(DRAWN_VIDEO), SAMPLE_VIDEO]
        for k in range(2):
            copy = tmp / f"speaker_copy{k}.mp4"
            shutil.copy2(video, copy)  # same bytes and mtime: the copied cache is valid for it
            shutil.copy(result.cache, cache_path(copy, tmp))
            videos.append(copy)
        for v in videos[1:3]:
            prepare_model(v, cache_dir=tmp)
        rss0 = psutil.Process().memory_info().rss
        store = ModelStore(cache_dir=tmp, limit=5)
        for v in videos:
            store.get(v)
        rss5 = psutil.Process().memory_info().rss
        stats = store.stats()
    show([
        ("video", f"{video.name}: {result.n_frames} frames, {duration_s:.1f} s"),
        ("prepare time", f"{prepare_s:.1f} s = {prepare_s / duration_s:.2f} x the video's duration (goal < 1.0)"),
        ("re-run (unchanged)", f"{rerun_s * 1000:.0f} ms ({again.status})"),
        ("cache size", f"{result.cache_bytes / 1e6:.1f} MB"),
        ("load a prepared model", f"{load_s * 1000:.0f} ms"),
        ("5 models loaded", f"{', '.join(stats.loaded)}"),
        ("resident memory", f"{rss5 / 1e6:.0f} MB in all, +{(rss5 - rss0) / 1e6:.0f} MB for the 5 models "
                            f"(arrays {stats.bytes_held / 1e6:.0f} MB)"),
    ])


if __name__ == "__main__":
    main()
