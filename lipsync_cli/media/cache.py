"""The model cache: one `.npz` per model video, holding everything the service and the compositor
need without the video.

Keys (all plain numeric arrays; loads with `np.load(path, allow_pickle=False)`):

| key | shape, dtype | what |
| --- | --- | --- |
| `format_version` | (), int64 | `FORMAT_VERSION`; another version is rebuilt |
| `source_sha256` | (32,), uint8 | SHA-256 of the video file |
| `source_size_bytes`, `source_mtime_ns` | (), int64 | a fast "unchanged" check before hashing |
| `fps` | (2,), int64 | numerator, denominator |
| `frame_size` | (2,), int64 | width, height in pixels |
| `frame_jpeg`, `frame_offsets` | (bytes,), uint8; (N+1,), int64 | every frame as JPEG, frame i is `frame_jpeg[off[i]:off[i+1]]` |
| `region_jpeg`, `region_offsets` | same | the 320x320 mouth region of every frame (the area `mouth_bounds` covers) |
| `face_bounds` | (N, 4), float32 | smoothed face box [xmin, ymin, xmax, ymax], full-frame pixels |
| `mouth_bounds` | (N, 4), float32 | smoothed square lower-face region the 320x320 images cover |
| `landmarks` | (N, 468, 2), float32 | face-mesh points, full-frame pixels, lightly smoothed |
| `mouth_open` | (N,), float32 | inner-lip gap over eye distance (0 closed, ~0.3 wide open) |
| `mouth_width` | (N,), float32 | mouth-corner distance over eye distance |
| `face_found` | (N,), uint8 | 1 where the tracker saw the face, 0 where it was bridged |
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipsync_cli.media import face as F
from lipsync_cli.media.files import atomic_write
from lipsync_cli.errors import CacheError, VideoError
from lipsync_cli.media.models import model_name
from lipsync_cli.progress import ProgressFn, report
from lipsync_cli.media.video import iter_frames, probe_video

FORMAT_VERSION = 2
REGION_PX = 320  # side of the mouth-region images, as the original service returns them
FRAME_JPEG_QUALITY = 92
REGION_JPEG_QUALITY = 95
CENTER_SMOOTH_FRAMES = 1.5  # Gaussian sigma for the region centre: zero-phase, so no lag
SIZE_SMOOTH_FRAMES = 6.0  # the region size changes slowly; smooth it more
BOUNDS_POINT_SMOOTH_FRAMES = 0.8  # the bounds are placed on landmarks smoothed this much against detector jitter
REQUIRED_KEYS = ("format_version", "source_sha256", "source_size_bytes", "source_mtime_ns", "fps",
                 "frame_size", "frame_jpeg", "frame_offsets", "region_jpeg", "region_offsets",
                 "face_bounds", "mouth_bounds", "landmarks", "mouth_open", "mouth_width", "face_found")


def default_cache_dir() -> Path:
    """`$LIPSYNC_CACHE_DIR`, else `$XDG_CACHE_HOME/lipsync`, else `~/.cache/lipsync`."""
    if os.environ.get("LIPSYNC_CACHE_DIR"):
        return Path(os.environ["LIPSYNC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lipsync"


def cache_path(video: Path, cache_dir: Path | None = None) -> Path:
    """Where the cache of `video` lives: `<name>-<hash of its absolute path>.npz`."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = hashlib.sha1(str(Path(video).resolve()).encode()).hexdigest()[:10]
    return cache_dir / f"{model_name(video)}-{tag}.npz"


def file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_model` did."""

    video: Path
    cache: Path
    status: str  # "fresh" (nothing to do), "built" (new) or "rebuilt"
    reason: str  # why it was rebuilt ("" otherwise)
    n_frames: int
    fps: float
    face_found_pct: float
    cache_bytes: int
    seconds: float


def validate_arrays(a: dict[str, np.ndarray]) -> str:
    """"" when the arrays of a cache hold what the keys table promises, else what is wrong.

    A cache may be damaged or tampered with in ways `np.load` does not notice (a member of the wrong
    shape or type, offsets past the end of the JPEG bytes); this catches them before anything indexes.
    """
    missing = [k for k in REQUIRED_KEYS if k not in a]
    if missing:
        return "it is incomplete"
    if not all(isinstance(a[k], np.ndarray) for k in REQUIRED_KEYS):  # np.load hands back raw bytes then
        return "it holds a member that is not an array"
    found = a["face_found"]
    if found.ndim != 1 or len(found) == 0:
        return "it holds no frames"
    n = len(found)
    for jpeg, off in (("frame_jpeg", "frame_offsets"), ("region_jpeg", "region_offsets")):
        data, offsets = a[jpeg], a[off]
        if data.dtype != np.uint8 or data.ndim != 1 or offsets.shape != (n + 1,) or offsets.dtype.kind not in "iu":
            return f"its {jpeg} do not match its {n} frames"
        if offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) <= 0):
            return f"its {off} are damaged"
    shapes = {"face_bounds": (n, 4), "mouth_bounds": (n, 4), "landmarks": (n, 468, 2), "mouth_open": (n,),
              "mouth_width": (n,)}
    for key, shape in shapes.items():
        if a[key].shape != shape or a[key].dtype.kind != "f" or not np.isfinite(a[key]).all():
            return f"its {key} are damaged"
    for key in ("fps", "frame_size"):
        if a[key].shape != (2,) or a[key].dtype.kind not in "iu" or np.any(a[key] <= 0):
            return f"its {key} is damaged"
    return ""


def check_cache(video: Path, path: Path) -> str:
    """"" when the cache at `path` is good for `video`, else why it must be (re)built.

    Every member is read (so a damaged zip member fails its CRC here) and checked by `validate_arrays`.
    """
    if not path.exists():
        return "missing"
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format_version" not in z.files or int(z["format_version"]) != FORMAT_VERSION:
                return "it is from another format version"
            a = {k: z[k] for k in REQUIRED_KEYS if k in z.files}
        damage = validate_arrays(a)
        if damage:
            return damage
        st = video.stat()
        if int(a["source_size_bytes"]) == st.st_size and int(a["source_mtime_ns"]) == st.st_mtime_ns:
            return ""
        if bytes(a["source_sha256"]) != file_sha256(video):
            return "the video changed"
        return ""
    except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        return f"it is corrupt ({type(exc).__name__})"


def _bridge(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill frames where the face was lost by interpolating between the nearest found frames."""
    idx = np.arange(len(found))
    flat = values.reshape(len(found), -1)
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        out[:, j] = np.interp(idx, idx[found], flat[found, j])
    return out.reshape(values.shape)


def smooth_over_frames(values: np.ndarray, sigma_frames: float) -> np.ndarray:
    """(N, ...) values smoothed along the frames by a zero-phase Gaussian of this sigma, as float32."""
    from scipy.ndimage import gaussian_filter1d

    if len(values) < 2 or sigma_frames <= 0:
        return values
    return gaussian_filter1d(values.astype(np.float64), sigma_frames, axis=0, mode="nearest").astype(np.float32)


def region_square(points: np.ndarray) -> np.ndarray:
    """The lower-face square the mouth images cover: (..., 468, 2) -> (..., 3) centre x, centre y, side.

    It spans from the nose to well below the chin, so a dropping jaw stays inside.
    """
    face_w = np.linalg.norm(points[..., F.FACE_LEFT, :] - points[..., F.FACE_RIGHT, :], axis=-1)
    nose, chin = points[..., F.NOSE_TIP, :], points[..., F.CHIN, :]
    side = 1.15 * np.maximum(face_w, 1.6 * np.linalg.norm(chin - nose, axis=-1))
    cx = (nose[..., 0] + chin[..., 0]) / 2
    cy = nose[..., 1] + 0.30 * side
    return np.stack([cx, cy, side], axis=-1)


def square_to_bounds(sq: np.ndarray) -> np.ndarray:
    """(..., 3) centre/side -> (..., 4) [xmin, ymin, xmax, ymax]."""
    h = sq[..., 2] / 2
    return np.stack([sq[..., 0] - h, sq[..., 1] - h, sq[..., 0] + h, sq[..., 1] + h], axis=-1)


def crop_region(frame: np.ndarray, bounds: np.ndarray, size_px: int = REGION_PX) -> np.ndarray:
    """Resample the (sub-pixel) `bounds` box of a BGR frame to a size_px x size_px image."""
    x0, y0, x1, y1 = (float(v) for v in bounds)
    sx, sy = size_px / (x1 - x0), size_px / (y1 - y0)
    if min(sx, sy) < 1:  # shrinking: low-pass the box first, as warpAffine samples without averaging
        h, w = frame.shape[:2]
        pad = 4 + int(2 / min(sx, sy))
        wx0, wy0 = max(0, int(x0) - pad), max(0, int(y0) - pad)
        wx1, wy1 = min(w, int(x1) + pad + 1), min(h, int(y1) + pad + 1)
        frame = cv2.GaussianBlur(frame[wy0:wy1, wx0:wx1], (0, 0), 0.45 / min(sx, sy))
        x0, x1, y0, y1 = x0 - wx0, x1 - wx0, y0 - wy0, y1 - wy0
    m = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], np.float64)
    return cv2.warpAffine(frame, m, (size_px, size_px), flags=cv2.INTER_LINEAR if min(sx, sy) < 1 else cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VideoError("JPEG encoding failed")
    return buf.tobytes()


def _pack(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), np.uint8), offsets


def build_cache(video: Path, *, progress: ProgressFn | None = None) -> dict[str, np.ndarray]:
    """Decode, track and measure every frame of `video`; the arrays of its cache file."""
    progress = report(progress)
    info = probe_video(video)
    total = info.n_frames
    tracker = F.FaceTracker()
    points, found, frame_blobs = [], [], []
    with ThreadPoolExecutor(max_workers=2) as pool:  # JPEG encoding overlaps tracking (cv2 drops the GIL)
        for i, frame in enumerate(iter_frames(video, info)):
            frame_blobs.append(pool.submit(_encode_jpeg, frame, FRAME_JPEG_QUALITY))
            res = tracker.track(frame)
            found.append(res is not None)
            points.append(res.points if res is not None else np.zeros((468, 2), np.float32))
            progress("tracking", i + 1, max(total, i + 1))
        frame_blobs = [f.result() for f in frame_blobs]
    n = len(frame_blobs)
    if n == 0:
        raise VideoError(f"{video}: the video stream holds no frames")
    found_arr = np.array(found, bool)
    if not found_arr.any():
        raise VideoError(f"{video}: no face was found in any frame; use a video where the face is visible and frontal")
    # the landmarks are kept as tracked: smoothed over even two frames, a talking video's lips read
    # half open on frames where they are shut (and the other way round), and the mouth generator
    # picks and warps its sources by them; the bounds are placed on lightly smoothed ones
    pts = _bridge(np.stack(points), found_arr)
    steady = smooth_over_frames(pts, BOUNDS_POINT_SMOOTH_FRAMES)
    sq = region_square(steady)
    sq[:, :2] = smooth_over_frames(sq[:, :2], CENTER_SMOOTH_FRAMES)
    sq[:, 2] = smooth_over_frames(sq[:, 2], SIZE_SMOOTH_FRAMES)
    mouth_bounds = square_to_bounds(sq).astype(np.float32)
    lo, hi = steady.min(axis=1), steady.max(axis=1)
    face_bounds = smooth_over_frames(np.concatenate([lo, hi], axis=1), CENTER_SMOOTH_FRAMES)

    # the regions need the smoothed bounds, known only once every frame is tracked: decode the
    # video a second time rather than hold every full frame in memory meanwhile (GBs at 1080p)
    region_blobs = []
    for i, frame in enumerate(iter_frames(video, info)):
        if i >= n:
            break
        region_blobs.append(_encode_jpeg(crop_region(frame, mouth_bounds[i]), REGION_JPEG_QUALITY))
        progress("cropping", i + 1, n)
    frame_jpeg, frame_offsets = _pack(frame_blobs)
    region_jpeg, region_offsets = _pack(region_blobs)
    st = video.stat()
    return {
        "format_version": np.int64(FORMAT_VERSION),
        "source_sha256": np.frombuffer(file_sha256(video), np.uint8),
        "source_size_bytes": np.int64(st.st_size),
        "source_mtime_ns": np.int64(st.st_mtime_ns),
        "fps": np.array([info.fps.numerator, info.fps.denominator], np.int64),
        "frame_size": np.array([info.width, info.height], np.int64),
        "frame_jpeg": frame_jpeg, "frame_offsets": frame_offsets,
        "region_jpeg": region_jpeg, "region_offsets": region_offsets,
        "face_bounds": face_bounds.astype(np.float32), "mouth_bounds": mouth_bounds,
        "landmarks": pts.astype(np.float32),
        "mouth_open": F.mouth_open_ratio(pts).astype(np.float32),
        "mouth_width": F.mouth_width_ratio(pts).astype(np.float32),
        "face_found": found_arr.astype(np.uint8),
    }


def write_cache(arrays: dict[str, np.ndarray], path: Path) -> int:
    """Write atomically (temp file + rename); returns the size in bytes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot write the cache in {path.parent} ({exc.strerror}); set --cache-dir") from exc
    with atomic_write(path, error=CacheError, suffix=".tmp.npz") as f:
        np.savez(f, **arrays)
    return path.stat().st_size


def prepare_model(video: Path, *, cache_dir: Path | None = None, force: bool = False,
                  progress: ProgressFn | None = None) -> PrepareResult:
    """Make sure `video` has a good cache; build or rebuild it when needed."""
    t0 = time.perf_counter()
    video = Path(video)
    path = cache_path(video, cache_dir)
    probe_video(video)  # a clear error for a missing or non-video file before anything else
    why = "forced" if force else check_cache(video, path)
    if not why:
        with np.load(path, allow_pickle=False) as z:
            n, fps = len(z["face_found"]), z["fps"]
            pct = 100.0 * float(z["face_found"].mean())
        return PrepareResult(video, path, "fresh", "", n, float(fps[0] / fps[1]), pct, path.stat().st_size,
                             time.perf_counter() - t0)
    progress = report(progress)
    arrays = build_cache(video, progress=progress)
    progress("writing", 0, 1)
    size = write_cache(arrays, path)
    progress("writing", 1, 1)
    fps = arrays["fps"]
    return PrepareResult(video, path, "built" if why == "missing" else "rebuilt",
                         "" if why == "missing" else why, len(arrays["face_found"]), float(fps[0] / fps[1]),
                         100.0 * float(arrays["face_found"].mean()), size, time.perf_counter() - t0)
