"""Does a render still give the same pixels as a base revision? (issue 11: "rendered output must not change")

Renders the same speech onto the same model videos twice, once with this checkout and once with
a base git revision checked out in a temporary `git worktree`, each in its own process
(`python -m lipsync_cli render`, PYTHONPATH pointing at its own tree) with its own empty cache, then
decodes both MP4s with PyAV and compares them frame by frame.

    python bench/render_equivalence.py                 # base b5f38d8 (the commit before the layer split)
    python bench/render_equivalence.py --base HEAD~3

Prints, per clip, the frames compared and the max / mean absolute pixel difference (RGB, 0-255);
exits 1 when a clip's frame counts differ or its max difference is over MAX_ABS_DIFF. The worktree
and the renders are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, SAMPLE_VIDEO, SHARED_DATA, SPEAKER_VIDEO, need, show  # noqa: E402

DEFAULT_BASE = "b5f38d8"  # the last commit before the package was split into layer subpackages
MAX_ABS_DIFF = 2  # H.264 of identical frames decodes identically; 2 leaves room for encoder noise only
RENDER_TIMEOUT_S = 900
# (model video, speech) pairs: the bundled sample and a real HEVC portrait with stereo 44.1 kHz speech
CLIPS = [
    (SAMPLE_VIDEO, REPO / "samples" / "speech.wav"),
    (SPEAKER_VIDEO, SHARED_DATA / "speech_44k_stereo_7s.wav"),
]


@dataclass(frozen=True)
class Comparison:
    clip: str
    frames_a: int
    frames_b: int
    max_abs_diff: int
    mean_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.frames_a == self.frames_b and self.max_abs_diff <= MAX_ABS_DIFF


def render(tree: Path, video: Path, speech: Path, output: Path, cache_dir: Path) -> None:
    """`python -m lipsync_cli render` with the package of `tree` (its own process, its own cache)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "LIPSYNC_CACHE_DIR": str(cache_dir)}
    where = subprocess.run([sys.executable, "-c", "import lipsync_cli; print(lipsync_cli.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"the render in {tree} would import lipsync_cli from {where}: check PYTHONPATH")
    proc = subprocess.run([sys.executable, "-m", "lipsync_cli", "render", str(speech), "-o", str(output),
                           "--model", str(video), "--cache-dir", str(cache_dir)],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    if proc.returncode != 0:
        sys.exit(f"render in {tree} failed ({proc.returncode}):\n{proc.stderr.strip()}")


def compare(a: Path, b: Path, clip: str) -> Comparison:
    """Decode both videos (rgb24) and compare frame by frame, up to the shorter one."""
    import av

    frames_a = frames_b = 0
    max_diff, total, count = 0, 0.0, 0
    with av.open(str(a)) as ca, av.open(str(b)) as cb:
        it_b = cb.decode(video=0)
        for fa in ca.decode(video=0):
            frames_a += 1
            fb = next(it_b, None)
            if fb is None:
                continue
            frames_b += 1
            diff = np.abs(fa.to_ndarray(format="rgb24").astype(np.int16) - fb.to_ndarray(format="rgb24"))
            max_diff = max(max_diff, int(diff.max()))
            total += float(diff.sum())
            count += diff.size
        frames_b += sum(1 for _ in it_b)
    return Comparison(clip, frames_a, frames_b, max_diff, total / max(count, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"git revision to compare with (default {DEFAULT_BASE})")
    args = parser.parse_args()
    clips = [(need(v), need(s)) for v, s in CLIPS]
    with tempfile.TemporaryDirectory(prefix="render-equivalence-") as tmp:
        work = Path(tmp)
        base_tree = work / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base],
                       check=True, capture_output=True, text=True)
        try:
            results = []
            for video, speech in clips:
                name = f"{video.stem} + {speech.name}"
                outputs = []
                for label, tree in (("head", REPO), ("base", base_tree)):
                    out = work / f"{label}-{video.stem}.mp4"
                    print(f"rendering {name} with {label} ...", flush=True)
                    render(tree, video, speech, out, work / f"cache-{label}")
                    outputs.append(out)
                results.append(compare(*outputs, name))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)],
                           capture_output=True, text=True)
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True, text=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    print(f"\nthis checkout (HEAD {head} + working tree) against {args.base}; pass: max <= {MAX_ABS_DIFF}")
    show([(r.clip, f"{r.frames_a} vs {r.frames_b} frames, max abs diff {r.max_abs_diff}, mean "
           f"{r.mean_abs_diff:.4f}  {'ok' if r.ok else 'DIFFERENT'}") for r in results])
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
