"""Sound -> screen of `lipsync live` at other revisions, beside this one, in the same run.

    git worktree add /tmp/old b5f38d8
    python bench/live_revisions.py /tmp/old . [--bursts 20] [--repeat 2]

Each checkout's own CLI (`lipsync live --model samples/avatar.mp4`, its own cache) runs under Xvfb
with a private PulseAudio whose null sink is the microphone; this checkout's probe
(tests/latency_probe.py) plays speech bursts into it and reads the window's mouth back from the
screen. Printed per checkout and run: bursts seen, p50/p95 from a burst's first sample entering
the microphone to its mouth on screen. The checkouts take turns, so a busy moment hits them alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, SAMPLE_VIDEO

sys.path.insert(0, str(REPO / "tests"))

from live_support import probe_sound_to_screen, sound_to_screen_ms, virtual_display, virtual_sound  # noqa: E402
from lipsync_cli.media.store import ModelStore  # noqa: E402

CLI = "from lipsync_cli.cli import main; main()"  # older checkouts have no `python -m lipsync_cli`
START_S = 8.0  # the session's start (imports, the model, the window) before the bursts
GAP_S = 1.0


def prepare(checkout: Path, cache: Path) -> None:
    """The sample prepared by `checkout`'s own CLI into `cache` (cache formats differ between revisions)."""
    subprocess.run([sys.executable, "-c", CLI, "prepare", str(SAMPLE_VIDEO), "--cache-dir", str(cache)],
                   env={**os.environ, "PYTHONPATH": str(checkout)}, cwd=checkout, check=True, capture_output=True)


def run_checkout(checkout: Path, cache: Path, probe_cache: Path, bursts: int, tmp: Path) -> list[float]:
    """One live session of `checkout`'s CLI on its prepared `cache`, probed; sound -> screen of each
    burst seen (ms)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    video = str(SAMPLE_VIDEO)
    tmp.mkdir(parents=True, exist_ok=True)
    burst = tmp / "burst.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(burst), "Ah."], check=True)
    with virtual_display() as display, virtual_sound(tmp / "pulse") as sound:
        session = subprocess.Popen([sys.executable, "-c", CLI, "live", "--model", video, "--cache-dir", str(cache),
                                    "--duration", str(START_S + 30 + bursts * 3)],
                                   env={**env, **sound, "DISPLAY": display}, cwd=checkout,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(START_S)
            result = probe_sound_to_screen({**os.environ, **sound, "DISPLAY": display}, video=SAMPLE_VIDEO,
                                           cache_dir=probe_cache, burst=burst, count=bursts, gap_s=GAP_S)
        finally:
            session.terminate()
            session.communicate(timeout=30)
    return sound_to_screen_ms(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="checkouts (git worktrees) to compare")
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        probe_cache = Path(tmp) / "probe-cache"
        ModelStore(cache_dir=probe_cache).get(SAMPLE_VIDEO)  # the probe finds the window with this checkout's model
        caches = [Path(tmp) / f"cache-{k}" for k in range(len(args.checkouts))]
        for checkout, cache in zip(args.checkouts, caches):
            prepare(checkout.resolve(), cache)
        for run in range(1, args.repeat + 1):
            for checkout, cache in zip(args.checkouts, caches):
                work = Path(tmp) / f"run{run}-{cache.name}"
                ms = run_checkout(checkout.resolve(), cache, probe_cache, args.bursts, work)
                figures = "p50 {:5.0f} ms  p95 {:5.0f} ms".format(*np.percentile(ms, [50, 95])) if ms else "-"
                print(f"run {run}: {str(checkout):40s} {len(ms)}/{args.bursts} bursts seen   sound->screen {figures}"
                      f"   [load {os.getloadavg()[0]:.1f}]", flush=True)


if __name__ == "__main__":
    main()
