"""A contact strip of a rendered video's mouth: 24 consecutive frames, zoomed, to look at.

Writes a PNG: a first row with the model video's own mouth on the first frames of the window (for
comparison), then a 4 x 6 grid of 160x160 crops of the output's lower face on consecutive frames.
Every tile is the area the generator works on (`Model.mouth_bounds` of the model frame the output
frame was drawn on, `timing.ping_pong`), and is labelled with its frame number and the judge's lip
gap (`judge.py`: |p13 - p14| / |p10 - p152| from the tracker on that output frame).

    python bench/contact_strip.py OUT.mp4 MODEL_VIDEO strip.png [--start 50] [--cache DIR]
    python bench/contact_strip.py OUT.mp4 MODEL_VIDEO strip.png --by-opening

--by-opening: the 24 tiles are the whole video's frames whose gaps sit nearest 24 evenly spaced
percentiles, shut to widest (every opening the render makes, to look at side by side).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from judge import CHIN, FOREHEAD, INNER_BOTTOM, INNER_TOP  # noqa: E402
from lipsync_cli.core.timing import ping_pong  # noqa: E402
from lipsync_cli.media.face import FaceTracker  # noqa: E402
from lipsync_cli.media.store import ModelStore  # noqa: E402
from lipsync_cli.media.video import iter_frames  # noqa: E402

TILE_PX = 160
COLUMNS, ROWS = 6, 4  # 24 output frames
LABEL_BGR = (0, 255, 255)
ZOOM_SHARE = 0.6  # a tile shows this share of the region's side, centred between the mouth and the chin


def mouth_box(bounds: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[x0, y0, x1, y1]: ZOOM_SHARE of the region `bounds`, centred between the mouth and the chin of `points`."""
    side = ZOOM_SHARE * float(bounds[2] - bounds[0])
    cx = float(points[INNER_TOP, 0] + points[CHIN, 0]) / 2
    cy = float(points[INNER_TOP, 1] + points[CHIN, 1]) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def crop(frame: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The (TILE_PX, TILE_PX, 3) tile of `frame` under the box `bounds` [x0, y0, x1, y1] (sub-pixel)."""
    x0, y0, x1, y1 = (float(v) for v in bounds)
    s = TILE_PX / (x1 - x0)
    m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float64)
    return cv2.warpAffine(frame, m, (TILE_PX, TILE_PX), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def judge_gap(tracker: FaceTracker, frame: np.ndarray) -> float:
    res = tracker.track(frame)
    if res is None:
        return float("nan")
    p = res.points
    return float(np.linalg.norm(p[INNER_TOP] - p[INNER_BOTTOM]) / max(np.linalg.norm(p[FOREHEAD] - p[CHIN]), 1e-6))


def label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(tile, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, LABEL_BGR, 1, cv2.LINE_AA)
    return tile


def by_opening(output: Path, n: int) -> dict[int, float]:
    """{output frame: judge's gap} of the frames whose gaps sit nearest n evenly spaced percentiles
    (0..100), shut to widest; the gaps as tracked through the whole video."""
    tracker = FaceTracker()
    gaps = np.array([judge_gap(tracker, frame) for frame in iter_frames(output)])
    picked = [int(np.nanargmin(np.abs(gaps - g))) for g in np.nanpercentile(gaps, np.linspace(0, 100, n))]
    return {i: float(gaps[i]) for i in picked}


def strip(output: Path, model_video: Path, *, start: int, store: ModelStore, opening: bool = False) -> np.ndarray:
    """The contact strip image (BGR) of output frames start .. start + 23 (opening: `by_opening`'s frames)."""
    model = store.get(model_video)
    tracker_out, tracker_model = FaceTracker(), FaceTracker()
    tiles, originals = [], []
    n = COLUMNS * ROWS
    known = by_opening(output, n) if opening else {}
    frames = list(known) if opening else list(range(start, start + n))
    shown = {}
    for i, frame in enumerate(iter_frames(output)):
        if i > max(frames):
            break
        if i in frames:
            gap = known[i] if opening else judge_gap(tracker_out, frame)  # consecutive frames: tracked
            shown[i] = (frame, gap)
    for i in frames:
        if i not in shown:
            continue
        frame, gap = shown[i]
        mf = ping_pong(i, model.n_frames)
        bounds = mouth_box(model.mouth_bounds[mf], model.landmarks[mf])
        tiles.append(label(crop(frame, bounds), f"{i} gap {gap:.3f}"))
        if len(originals) < COLUMNS:
            own = model.frame(mf)
            originals.append(label(crop(own, bounds), f"model {mf} {judge_gap(tracker_model, own):.3f}"))
    blank = np.zeros((TILE_PX, TILE_PX, 3), np.uint8)
    tiles += [blank] * (n - len(tiles))
    originals += [blank] * (COLUMNS - len(originals))
    rows = [np.hstack(originals)] + [np.hstack(tiles[r * COLUMNS:(r + 1) * COLUMNS]) for r in range(ROWS)]
    sep = np.full((4, COLUMNS * TILE_PX, 3), 255, np.uint8)  # the model row apart from the output rows
    return np.vstack([rows[0], sep] + rows[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", type=Path, help="the rendered video")
    ap.add_argument("model_video", type=Path, help="the avatar video it was rendered on")
    ap.add_argument("png", type=Path)
    ap.add_argument("--start", type=int, default=50, help="first output frame of the strip")
    ap.add_argument("--cache", type=Path, help="model cache folder (default: the project's)")
    ap.add_argument("--by-opening", action="store_true", help="tiles from shut to widest over the whole video")
    args = ap.parse_args()
    store = ModelStore(cache_dir=args.cache) if args.cache else ModelStore()
    cv2.imwrite(str(args.png), strip(args.output, args.model_video, start=args.start, store=store,
                                     opening=args.by_opening))
    print(args.png)


if __name__ == "__main__":
    main()
