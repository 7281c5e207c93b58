"""Prepared models in memory: a `Model` reads its cache file, a `ModelStore` keeps an LRU of them.

`render`, `live`, `serve` and the gRPC service all get models through a `ModelStore`, which
prepares a model on first use if it has no good cache yet.
"""

from __future__ import annotations

import copy
import threading
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from cachetools import LRUCache

from lipsync_cli.media.cache import (REGION_PX, cache_path, check_cache, default_cache_dir, prepare_model,
                                     validate_arrays)
from lipsync_cli.errors import CacheError
from lipsync_cli.media.yuv import Planes, decode_jpeg_into
from lipsync_cli.media.models import default_model, find_named_model, model_name, resolve_model
from lipsync_cli.progress import ProgressFn

DEFAULT_MODEL_LIMIT = 5
# decoded mouth regions kept per model (320x320x3: 0.3 MB each). A live stream walks the model frames
# forth and back one a frame, and each region costs 0.6-0.8 ms to decode: 64 MiB holds every region of a
# clip of up to 218 frames (the sample's 200: after its first pass nothing is decoded again) and the
# most recent 218 of a longer one, which the walk back then finds
REGION_CACHE_BYTES = 64 * 2**20
_DECODE_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


def _nbytes(a: np.ndarray) -> int:
    return a.nbytes


class Model:
    """One prepared model video: frames and mouth regions (decoded on demand) plus tracking data."""

    def __init__(self, video: Path, cache_file: Path, *, source_stat: tuple[int, int] | None = None):
        """source_stat: the video's (size, mtime_ns) as it was checked against the cache; by default
        the ones the cache recorded (a copied or touched video has another mtime, same content)."""
        self.video = Path(video)
        self.name = model_name(video)
        self.cache_file = Path(cache_file)
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise CacheError(f"cannot read the cache {cache_file} ({exc})") from exc
        damage = validate_arrays(a)
        if damage:
            raise CacheError(f"the cache {cache_file} cannot be used: {damage}")
        self.fps = Fraction(int(a["fps"][0]), int(a["fps"][1]))
        self.width, self.height = (int(v) for v in a["frame_size"])
        self._frame_jpeg, self._frame_off = a["frame_jpeg"], a["frame_offsets"]
        self._region_jpeg, self._region_off = a["region_jpeg"], a["region_offsets"]
        self.face_bounds: np.ndarray = a["face_bounds"]  # (N, 4) float32
        self.mouth_bounds: np.ndarray = a["mouth_bounds"]  # (N, 4) float32, what region images cover
        self.landmarks: np.ndarray = a["landmarks"]  # (N, 468, 2) float32, full-frame pixels
        self.mouth_open: np.ndarray = a["mouth_open"]  # (N,) float32
        self.mouth_width: np.ndarray = a["mouth_width"]  # (N,) float32
        self.face_found: np.ndarray = a["face_found"].astype(bool)
        self.source_stat = source_stat or (int(a["source_size_bytes"]), int(a["source_mtime_ns"]))
        self.n_frames = len(self.face_found)
        self.region_px = REGION_PX
        self._regions: LRUCache[int, np.ndarray] = LRUCache(maxsize=REGION_CACHE_BYTES, getsizeof=_nbytes)
        self._regions_lock = threading.Lock()  # LRUCache is not thread-safe (a lookup reorders it)

    def frame_jpeg(self, i: int) -> bytes:
        return self._frame_jpeg[self._frame_off[i]:self._frame_off[i + 1]].tobytes()

    def frame(self, i: int, *, reduce: int = 1) -> np.ndarray:
        """Full frame i as (H, W, 3) uint8 BGR; reduce 2, 4 or 8 decodes it that many times smaller (faster)."""
        return cv2.imdecode(self._frame_jpeg[self._frame_off[i]:self._frame_off[i + 1]], _DECODE_FLAGS[reduce])

    def frame_into(self, i: int, planes: Planes) -> bool:
        """Decode full frame i straight into the planes of a yuv420p frame of the model's size
        (`media.yuv`); False when its JPEG is not 4:2:0 of that size (decode it with `frame`)."""
        return decode_jpeg_into(self._frame_jpeg[self._frame_off[i]:self._frame_off[i + 1]], planes)

    def region(self, i: int) -> np.ndarray:
        """The 320x320 mouth region of frame i (the area `mouth_bounds[i]` covers), BGR, read-only (it
        is shared: copy it to draw on it)."""
        i = int(i)
        with self._regions_lock:
            img = self._regions.get(i)
        if img is None:
            img = cv2.imdecode(self._region_jpeg[self._region_off[i]:self._region_off[i + 1]], cv2.IMREAD_COLOR)
            img.flags.writeable = False
            with self._regions_lock:
                self._regions[i] = img
        return img

    def region_points(self, i: int, points: np.ndarray | None = None) -> np.ndarray:
        """Landmarks of frame i (or `points`, full-frame pixels) in that frame's region pixels."""
        b = self.mouth_bounds[i]
        pts = self.landmarks[i] if points is None else points
        return (pts - b[:2]) * (self.region_px / (b[2] - b[0]))

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays of this model."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    @property
    def duration_s(self) -> float:
        return self.n_frames / float(self.fps)


def _stat(video: Path) -> tuple[int, int]:
    st = video.stat()
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class StoreStats:
    loaded: tuple[str, ...]  # names, in the order they were first loaded
    bytes_held: int
    limit: int


class ModelStore:
    """An LRU of at most `limit` loaded models (thread-safe). Models are looked up by name or path."""

    def __init__(self, *, cache_dir: Path | None = None, models_dir: Path | None = None,
                 limit: int = DEFAULT_MODEL_LIMIT, progress: ProgressFn | None = None):
        if limit < 1:
            raise ValueError("the model limit must be at least 1")
        # resolved now, so every user of the store (and any process it hands the folder to) sees a real path
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.models_dir, self.limit = models_dir, limit
        self.progress = progress
        # LRUCache is not thread-safe (a lookup reorders it): every access holds self._lock
        self._models: LRUCache[Path, Model] = LRUCache(maxsize=limit)
        self._aliases: dict[str, Path] = {}  # names of videos given by path (see register)
        self._preparing: dict[Path, threading.Lock] = {}  # one lock per video being prepared
        self._lock = threading.Lock()

    def register(self, video: Path, name: str | None = None) -> str:
        """Make a video given by path reachable by `name` (default: its model name); returns the name.

        For the in-process service, and for the original API's LoadModel, which names videos itself.
        """
        video = Path(video).resolve()
        name = name or model_name(video)
        self._aliases[name] = video
        return name

    def resolve(self, spec: str, *, names_only: bool = False) -> Path:
        """The video a name (or, unless names_only, a path) stands for."""
        if spec in self._aliases:
            return self._aliases[spec]
        if names_only:
            return find_named_model(spec, models_dir=self.models_dir)
        return resolve_model(spec, models_dir=self.models_dir)

    def is_loaded(self, video: Path) -> bool:
        with self._lock:
            return Path(video).resolve() in self._models

    def get(self, spec: str | Path, *, names_only: bool = False) -> Model:
        """The loaded model for a name or video path; prepares and loads it if needed.

        Preparing one model never blocks lookups of the others: each video has its own lock.
        """
        video = Path(spec).resolve() if isinstance(spec, Path) else self.resolve(spec, names_only=names_only).resolve()
        with self._lock:
            model = self._models.get(video)  # a hit makes it the most recently used
            if model is not None and _stat(video) == model.source_stat:
                return model
            video_lock = self._preparing.setdefault(video, threading.Lock())
        with video_lock:
            with self._lock:  # another thread may have loaded it while this one waited
                model = self._models.get(video)
                if model is not None and _stat(video) == model.source_stat:
                    return model
            # the video as checked now: a video copied or touched since its cache was made (same
            # content, another mtime) is then loaded once, not again on every lookup
            stat = _stat(video)
            result = prepare_model(video, cache_dir=self.cache_dir, progress=self.progress)
            try:
                model = Model(video, result.cache, source_stat=stat)
            except CacheError:
                # damaged after its check (or in a way only a full load shows): rebuild it once
                result = prepare_model(video, cache_dir=self.cache_dir, force=True, progress=self.progress)
                model = Model(video, result.cache, source_stat=stat)
            with self._lock:
                self._models[video] = model  # drops the least recently used past the limit
            return model

    def video_for(self, model: str | None) -> Path:
        """The video a model name or path means; None: the only video in models_dir, else the bundled sample."""
        return self.resolve(model) if model else default_model(models_dir=self.models_dir)

    def open(self, model: str | None) -> tuple[Model, str]:
        """The loaded model for a name, a path or None (see `video_for`), and the name it is served under.

        A video given by path becomes reachable by its name (see `register`).
        """
        video = self.video_for(model)
        return self.get(video), self.register(video)

    def is_prepared(self, video: Path) -> bool:
        """True when the video has a good cache (no work needed to load it)."""
        return check_cache(Path(video), cache_path(Path(video), self.cache_dir)) == ""

    def stats(self) -> StoreStats:
        with self._lock:
            # reading an LRUCache's items marks them used: read a copy, so the order stays the callers'
            models = list(copy.copy(self._models).values())
        return StoreStats(tuple(m.name for m in models), sum(m.nbytes for m in models), self.limit)
