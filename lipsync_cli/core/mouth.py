"""The default mouth generator: the avatar's own mouth, no downloaded weights.

For each output frame:
1. The wanted inner-lip gap comes from the driver's `open` and this person's range (what their
   video shows, or a plausible default when the video never opens the mouth).
2. A source frame is picked from the model video whose mouth is closest to that (and close in head
   pose, and continuing the previous pick where possible, so texture does not flicker).
3. Its lower face is aligned onto the current frame with a similarity transform on stable points
   (nose, face sides) and blended in under a feathered mask, colour-matched on the mask's rim.
4. Whatever gap is still missing is made by warping: the lower lip and jaw move down, the upper lip
   a little up, and where the source has no open mouth to stretch, the inner mouth is drawn (dark
   shaded interior, upper teeth, a hint of tongue) in the colours of this person's lips.

Everything happens in the 320x320 region images the cache holds, so one frame costs a few ms.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync_cli.media import face as F
from lipsync_cli.core.driver import MouthParams
from lipsync_cli.core.generator import MouthImage
from lipsync_cli.media.store import Model

TALKING_MIN_OPEN = 0.07  # a video whose mouth opens wider than this (gap/eye distance) talks
DEFAULT_MAX_OPEN = 0.17  # a plausible full opening for a person whose video never opens
PRESSED_OPEN = 0.004  # the inner-lip gap of lips pressed together for P/B/M
REST_SLACK = 0.012  # a base frame this close to the rest gap counts as at rest
UPPER_SHARE = 0.3  # of an opening, how much the upper lip rises (the jaw does the rest)
SWITCH_PENALTY = 0.12  # cost of jumping to a non-adjacent source frame, in units of the open range
POSE_WEIGHT = 2.0  # cost per unit of head-pose difference (nose offset / eye distance)
MATCH_TOLERANCE = 0.18  # keep following the previous source while within this share of the range
FEATHER_FRACTION = 0.045  # mask feather (Gaussian sigma) as a share of the region side
STRETCH_MAX = 2.5  # how far a real inner mouth may be stretched before it is drawn instead
SLIT_FRACTION = 0.9  # the share of the inner-lip width that opens; the corners stay together
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# lower face outline: jaw from one angle to the other, then up the cheek and under the nose
LOWER_FACE = (58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 410, 322, 2, 92, 186)
STABLE_POINTS = (1, 2, 4, 5, 195, 197, 98, 327, 234, 454, 93, 323, 33, 263, 133, 362, 168, 6)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + shift taking (n, 2) src onto dst, as a 2x3 matrix."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - ms, dst - md
    denom = float((a ** 2).sum()) or 1.0
    c = float((a * b).sum()) / denom
    s = float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()) / denom
    rot = np.array([[c, -s], [s, c]])
    return np.hstack([rot, (md - rot @ ms)[:, None]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


@dataclass
class MouthProfile:
    """What the generator needs to know about one model, computed once."""

    open: np.ndarray  # (N,) inner-lip gap / eye distance per frame
    width: np.ndarray  # (N,) mouth width / eye distance
    pose: np.ndarray  # (N, 2) nose offset from the eye midpoint / eye distance (yaw, pitch)
    rest_open: float  # this person's mouth at rest
    max_open: float  # the widest plausible opening for this person
    talking: bool  # the video itself shows open mouths worth reusing
    candidates: np.ndarray  # frame indices usable as mouth sources (the tracker saw the face there)
    region_pts: np.ndarray  # (N, 468, 2) float32 landmarks in each frame's region pixels
    rest_width: float  # median mouth width / eye distance
    width_span: float  # range of the mouth width over the video (at least a small floor)

    @classmethod
    def of(cls, model: Model) -> "MouthProfile":
        pts = model.landmarks
        iod = F.interocular_px(pts)
        eyes_mid = (pts[:, F.LEFT_EYE_OUTER] + pts[:, F.RIGHT_EYE_OUTER]) / 2
        pose = (pts[:, F.NOSE_TIP] - eyes_mid) / iod[:, None]
        open_ = model.mouth_open.astype(np.float64)
        rest = float(np.percentile(open_, 5))
        lib_max = float(np.percentile(open_, 98))
        talking = lib_max > TALKING_MIN_OPEN
        max_open = max(lib_max, DEFAULT_MAX_OPEN) if not talking else max(lib_max, rest + 0.08)
        candidates = np.flatnonzero(model.face_found)
        if len(candidates) == 0:
            candidates = np.arange(model.n_frames)
        region_pts = np.stack([model.region_points(i) for i in range(model.n_frames)]).astype(np.float32)
        width = model.mouth_width.astype(np.float64)
        return cls(open_, width, pose, rest, max_open, talking, candidates, region_pts,
                   float(np.median(width)), max(float(np.ptp(width)), 1e-3))


class OwnMouthGenerator:
    """The weight-free generator (see the module docstring)."""

    name = "own"

    def __init__(self) -> None:
        # keyed by the model object itself: a model the store drops takes its profile with it
        self._profiles: weakref.WeakKeyDictionary[Model, MouthProfile] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def profile(self, model: Model) -> MouthProfile:
        with self._lock:
            if model not in self._profiles:
                self._profiles[model] = MouthProfile.of(model)
            return self._profiles[model]

    def open_stream(self, model: Model) -> "OwnMouthStream":
        return OwnMouthStream(model, self.profile(model))


class OwnMouthStream:
    """Renders mouth regions for one client stream (remembers its last source frame)."""

    def __init__(self, model: Model, profile: MouthProfile):
        self.model, self.p = model, profile
        self.prev_source: int | None = None

    def target_open(self, params: MouthParams) -> float:
        """The wanted inner-lip gap (over eye distance) for these parameters."""
        p = self.p
        if params.closed:
            return min(p.rest_open, PRESSED_OPEN)
        if not params.speech:
            return p.rest_open
        return p.rest_open + params.open * (p.max_open - p.rest_open)

    def choose_source(self, base: int, target: float, target_width: float) -> int:
        """The model frame whose mouth best matches, near the base frame's pose, continuing the last pick."""
        p = self.p
        if not p.talking:
            return base
        span = max(p.max_open - p.rest_open, 1e-3)
        prev = self.prev_source
        if prev is not None:
            nxt = min(prev + 1, self.model.n_frames - 1)
            for cand in (nxt, prev):
                if (abs(p.open[cand] - target) / span < MATCH_TOLERANCE
                        and np.abs(p.pose[cand] - p.pose[base]).sum() < 0.05):
                    return int(cand)
        c = p.candidates
        cost = (np.abs(p.open[c] - target) / span
                + 0.5 * np.abs(p.width[c] - target_width) / p.width_span
                + POSE_WEIGHT * np.abs(p.pose[c] - p.pose[base]).sum(axis=1))
        if prev is not None:
            cost = cost + SWITCH_PENALTY * (np.abs(c - prev) > 1)
        return int(c[int(np.argmin(cost))])

    def render(self, *, model_frame: int, params: MouthParams, audio: np.ndarray | None = None) -> MouthImage:
        model, p = self.model, self.p
        b = int(model_frame)
        bounds = model.mouth_bounds[b]
        base_img = model.region(b)
        at_rest = p.open[b] <= p.rest_open + REST_SLACK
        if not params.speech and at_rest:
            self.prev_source = None
            return MouthImage(base_img, bounds)
        target = self.target_open(params)
        target_w = p.rest_width * (1 + 0.10 * params.wide - 0.16 * params.round)
        s = self.choose_source(b, target, target_w)
        self.prev_source = s
        base_pts = p.region_pts[b]
        if s == b:
            img, pts = base_img, base_pts
        else:
            src_pts = p.region_pts[s]
            m = similarity(src_pts[list(STABLE_POINTS)], base_pts[list(STABLE_POINTS)])
            img = cv2.warpAffine(model.region(s), m, base_img.shape[1::-1], flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
            pts = _apply(m, src_pts)
        iod_px = float(np.linalg.norm(base_pts[F.LEFT_EYE_OUTER] - base_pts[F.RIGHT_EYE_OUTER]))
        scale_x = 1 + 0.07 * params.wide - 0.10 * params.round
        # only a frame of a talking video whose lips are apart shows a real inner mouth to stretch
        has_interior = p.talking and p.open[s] > p.rest_open + 2 * REST_SLACK
        img = warp_lips(img, pts, target_gap_px=target * iod_px, scale_x=scale_x, has_interior=has_interior)
        if s != b:
            img = blend_lower_face(base_img, img, base_pts, pts)
        return MouthImage(img, bounds)


def _contour_y(pts: np.ndarray, idx: tuple[int, ...], xs: np.ndarray) -> np.ndarray:
    c = pts[list(idx)]
    order = np.argsort(c[:, 0])
    return np.interp(xs, c[order, 0], c[order, 1])


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def warp_lips(img: np.ndarray, pts: np.ndarray, *, target_gap_px: float, scale_x: float = 1.0,
              has_interior: bool = True) -> np.ndarray:
    """Open or close the mouth of a region image to `target_gap_px` at its centre.

    img: (S, S, 3) uint8 BGR region; pts: (468, 2) its landmarks in region pixels. The lower lip and
    jaw move down (the upper lip a little up) with a lens-shaped opening between the inner corners;
    the skin around follows smoothly. Where the source has a real open mouth (`has_interior`) it is
    stretched; where it has none, the inner mouth is drawn.
    """
    size = img.shape[0]
    xl, xr = float(pts[78, 0]), float(pts[308, 0])
    if xr - xl < 4:
        return img
    cx, hw = (xl + xr) / 2, (xr - xl) / 2
    y_top_c = float(_contour_y(pts, UPPER_INNER, np.array([cx]))[0])
    y_bot_c = float(_contour_y(pts, LOWER_INNER, np.array([cx]))[0])
    gap_c = max(0.0, y_bot_c - y_top_c)
    delta = target_gap_px - gap_c
    if abs(delta) < 0.6 and abs(scale_x - 1) < 0.01:
        return img
    chin_y = float(pts[F.CHIN, 1])
    nose_y = float(pts[2, 1])
    # work only on the rows and columns that can move
    x0, x1 = int(max(0, cx - 2.6 * hw)), int(min(size, cx + 2.6 * hw))
    y0 = int(max(0, nose_y + 0.3 * (y_top_c - nose_y)))
    y1 = int(min(size, chin_y + 0.45 * (chin_y - y_bot_c) + abs(delta) + 4))
    if y1 - y0 < 4 or x1 - x0 < 4:
        return img
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    u = (xs - cx) / (SLIT_FRACTION * hw)  # -1..1 across the part of the mouth that opens
    y_top = _contour_y(pts, UPPER_INNER, xs).astype(np.float32)
    y_bot = _contour_y(pts, LOWER_INNER, xs).astype(np.float32)
    inside = np.abs(u) < 1  # outside the opening part the lips stay as the source has them
    y_top = np.where(inside, y_top, np.float32(pts[78, 1] + (pts[308, 1] - pts[78, 1]) * (xs > cx)))
    y_bot = np.where(inside, np.maximum(y_bot, y_top), y_top)
    src_gap = y_bot - y_top
    # opening profile across the mouth: a lens when opening, fuller when closing so no sliver stays
    if delta >= 0:
        slit = np.clip(1 - u ** 2, 0, 1) ** 1.3
    else:
        slit = np.clip(1 - u ** 6, 0, 1) ** 0.5
    jaw = 0.5 * (1 + np.cos(np.pi * np.clip(u / 2.4, -1, 1)))  # how much each column follows the jaw
    lip_up = 0.5 * (1 + np.cos(np.pi * np.clip(u / 1.6, -1, 1)))
    d_low = (1 - UPPER_SHARE) * delta
    d_up = UPPER_SHARE * delta
    ramp_px = 0.9 * hw
    # lower part: full jaw drop inside the slit right under the lip; outside, the skin ramps up to it
    below = ys - y_bot
    ramp_low = slit + (1 - slit) * _smoothstep(below / ramp_px)
    fade_chin = 1 - _smoothstep((ys - chin_y) / max(0.35 * (chin_y - y_bot_c), 4.0))
    dy_low = (d_low * jaw * ramp_low * fade_chin).astype(np.float32)
    above = y_top - ys
    ramp_up = slit + (1 - slit) * _smoothstep(above / ramp_px)
    fade_nose = 1 - _smoothstep(above / max(0.8 * (y_top_c - nose_y), 4.0))
    dy_up = (-d_up * lip_up * ramp_up * fade_nose).astype(np.float32)
    new_top = y_top - d_up * lip_up * slit
    new_bot = y_bot + d_low * jaw * slit
    # destination -> source rows (inverse map; the lower field is inverted by fixed-point steps)
    src_y_low = ys - dy_low
    for _ in range(2):
        b2 = src_y_low - y_bot
        r2 = slit + (1 - slit) * _smoothstep(b2 / ramp_px)
        f2 = 1 - _smoothstep((src_y_low - chin_y) / max(0.35 * (chin_y - y_bot_c), 4.0))
        src_y_low = ys - d_low * jaw * r2 * f2
    src_y_up = ys - dy_up
    in_gap = (ys > new_top) & (ys < new_bot)
    t = np.clip((ys - new_top) / np.maximum(new_bot - new_top, 1e-3), 0, 1)
    src_y_gap = y_top + t * src_gap
    lower_side = ys >= new_bot
    map_y = np.where(lower_side, src_y_low, np.where(in_gap, src_y_gap, src_y_up)).astype(np.float32)
    # lips spread or purse: squeeze columns about the centre near the mouth
    bell = np.exp(-(((xs - cx) / (1.6 * hw)) ** 2) - (((ys - (y_top_c + y_bot_c) / 2) / (1.2 * hw)) ** 2))
    map_x = (xs - (xs - cx) * (1 - 1 / scale_x) * bell).astype(np.float32)
    map_x = np.broadcast_to(map_x, map_y.shape).astype(np.float32)
    patch = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # draw the inner mouth where the source had none to stretch
    # the source's own inner mouth is stretched up to STRETCH_MAX; past that it would smear
    stretch_ok = has_interior & (src_gap >= 2.0) & (src_gap * STRETCH_MAX >= new_bot - new_top)
    need = in_gap & ~stretch_ok & (new_bot - new_top > 1.0)
    rows = np.flatnonzero(need.any(axis=1))
    if len(rows):
        r0, r1 = rows[0], rows[-1] + 1
        patch[r0:r1] = _draw_interior(patch[r0:r1], need[r0:r1], t[r0:r1], u, new_top, new_bot, img, pts)
    out = img.copy()
    out[y0:y1, x0:x1] = patch
    return out


def _lip_colour(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(pts[list(F.LIPS_OUTER)]).astype(np.int32)], 255)
    cv2.fillPoly(mask, [np.round(pts[list(F.LIPS_INNER)]).astype(np.int32)], 0)
    if mask.any():
        return np.array(cv2.mean(img, mask)[:3], np.float32)
    return np.array([90, 90, 150], np.float32)


def _draw_interior(patch, need, t, u, new_top, new_bot, img, pts) -> np.ndarray:
    """Paint a shaded inner mouth (dark interior, upper teeth, tongue) into the gap pixels."""
    lip = _lip_colour(img, pts)
    gap_px = np.maximum(new_bot - new_top, 0)[None, :]  # per column
    full_gap = float(gap_px.max()) or 1.0
    au = np.abs(u)[None, :]
    depth_px = t * gap_px  # distance below the upper lip
    # interior: lip colour in deep shadow, a little lighter near the lips (light bouncing in)
    edge = np.minimum(depth_px, (1 - t) * gap_px)
    shade = 0.13 + 0.17 * np.exp(-edge / 2.5) + 0.05 * (1 - au ** 2)
    warm = np.array([0.8, 0.72, 1.2], np.float32)  # the inside of a mouth is redder than the lips
    colour = (lip * warm)[None, None, :] * shade[..., None]
    # upper teeth: an arc under the upper lip, shallower and darker towards the corners
    if full_gap > 4:
        luma = float(lip.mean())
        ivory = np.array([0.74, 0.86, 0.97], np.float32) * min(225.0, max(150.0, 1.15 * luma + 55))
        teeth_px = np.minimum(0.32 * gap_px, 0.13 * (pts[308, 0] - pts[78, 0]) + 1) * np.clip(1 - au ** 2 * 1.4, 0, 1)
        on = np.clip((teeth_px - depth_px) / 1.2, 0, 1) * (au < 0.8)
        light = (1 - 0.45 * au ** 2) * (0.75 + 0.25 * np.clip(depth_px / np.maximum(teeth_px, 1), 0, 1))
        light = light * np.clip(depth_px / 1.5, 0.55, 1)  # the upper lip's shadow on the teeth
        colour = colour * (1 - on[..., None]) + (ivory[None, None, :] * light[..., None]) * on[..., None]
    # tongue: a soft mound low in a wide-open mouth
    if full_gap > 9:
        mound = np.clip(1 - (au / 0.6) ** 2 - ((1 - t) * gap_px / (0.35 * full_gap)) ** 2, 0, 1)
        tongue = lip * np.array([0.50, 0.50, 0.68], np.float32)
        m = (0.8 * mound)[..., None]
        colour = colour * (1 - m) + tongue[None, None, :] * m
    alpha = cv2.GaussianBlur(need.astype(np.float32), (5, 5), 1.0)[..., None]
    colour = cv2.GaussianBlur(colour.astype(np.float32), (0, 0), 0.9)
    return (patch.astype(np.float32) * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def lower_face_mask(shape: tuple[int, int], *point_sets: np.ndarray) -> np.ndarray:
    """Feathered (H, W) float32 mask of the lower face outlined by each (468, 2) point set."""
    h, w = shape
    k = 4  # built at a quarter of the size: it is blurred anyway
    mask = np.zeros((h // k, w // k), np.uint8)
    for pts in point_sets:
        cv2.fillPoly(mask, [np.round(pts[list(LOWER_FACE)] / k).astype(np.int32)], 255)
    grow = max(1, int(0.03 * w / k))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    small = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), FEATHER_FRACTION * w / k)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def blend_lower_face(base: np.ndarray, src: np.ndarray, base_pts: np.ndarray, src_pts: np.ndarray) -> np.ndarray:
    """Put the aligned source's lower face onto the base region, colour-matched on the mask's rim."""
    alpha = lower_face_mask(base.shape[:2], base_pts, src_pts)
    x0, y0, bw, bh = cv2.boundingRect((alpha > 0.004).astype(np.uint8))
    if bw == 0 or bh == 0:
        return base
    win = np.s_[y0:y0 + bh, x0:x0 + bw]
    a = np.ascontiguousarray(alpha[win])
    b, s = np.ascontiguousarray(base[win]), np.ascontiguousarray(src[win])
    rim = ((a > 0.05) & (a < 0.6)).astype(np.uint8)
    if cv2.countNonZero(rim) > 50:
        gain = (np.array(cv2.mean(b, rim)[:3]) + 1) / (np.array(cv2.mean(s, rim)[:3]) + 1)
        s = cv2.multiply(s, tuple(np.clip(gain, 0.85, 1.15)) + (0.0,))
    out = base.copy()
    out[win] = cv2.blendLinear(s, b, a, 1.0 - a)
    return out
