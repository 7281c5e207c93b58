"""Masks and colour matching on mouth-region images, shared by the generators and the compositor.

A mouth region is an (S, S, 3) uint8 BGR square (S = 320 in the cache) with its landmarks as
(468, 2) float region pixels. Everything here is a pure function of its arguments.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

EDGE_FEATHER_FRACTION = 0.2  # the outer share of a region that fades into the frame it is pasted on
LOWER_FACE_FEATHER_FRACTION = 0.045  # lower-face mask feather (Gaussian sigma) as a share of the region side
LOWER_FACE_GROW_FRACTION = 0.03  # the lower-face outline grows by this share of the side before feathering
MASK_REDUCTION = 4  # the lower-face mask is built at 1/4 of the size: it is blurred anyway
BLEND_MIN_ALPHA = 0.004  # mask values below this are outside the blend (bounds the work window)
BLEND_RIM_ALPHA = (0.05, 0.6)  # mask values strictly between these are the rim where colours are matched
BLEND_RIM_MIN_PX = 50  # this many rim pixels or fewer are too few to measure a colour difference on
BLEND_MAX_GAIN_CHANGE = 0.15  # matching never scales a source channel by more than this factor
# lower face outline: jaw from one angle to the other, then up the cheek and under the nose
LOWER_FACE = (58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 410, 322, 2, 92, 186)
# a resting face: the jaw line from ear to ear, closed across the nose. A closed mouth put on a
# half-open frame brings its cheeks and nose wings with it: the open frame's around closed lips still
# read as a mouth about to speak (to the landmark tracker too: talking speaker in silence 0.86 -> 0.88)
RESTING_FACE = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 195)


def smoothstep(t: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, and the cubic 3t^2 - 2t^3 between (flat at both ends)."""
    t = np.minimum(np.maximum(t, 0.0), 1.0)  # np.clip costs more on small arrays
    return t * t * (3 - 2 * t)


def channel_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) uint8: the largest of the three channel differences between two BGR images, per pixel
    (cv2.max over the split channels: the same as ndarray.max(axis=2) at a small fraction of its cost)."""
    diff = cv2.split(cv2.absdiff(a, b))
    return cv2.max(cv2.max(diff[0], diff[1]), diff[2])


@lru_cache(maxsize=8)
def feather_mask(size_px: int) -> np.ndarray:
    """(size, size) float32, read-only: 1 inside, a smooth fall to 0 at every edge (no visible box)
    over the outer EDGE_FEATHER_FRACTION of the side."""
    ramp_px = max(2, int(EDGE_FEATHER_FRACTION * size_px))
    t = smoothstep(np.minimum(np.arange(size_px), np.arange(size_px)[::-1]) / ramp_px)
    mask = np.outer(t, t).astype(np.float32)
    mask.flags.writeable = False  # one array is shared by every caller
    return mask


def match_colour_on_rim(source: np.ndarray, target: np.ndarray, rim: np.ndarray, *, min_rim_px: int,
                        max_gain_change: float, min_gain_change: float = 0.0) -> np.ndarray:
    """`source` scaled per channel so its mean colour over `rim` matches `target`'s there.

    source, target: (H, W, 3) uint8 of the same size; rim: (H, W) uint8, non-zero on the pixels
    where both should agree (a mask's rim). The gain per channel is clipped to 1 +- max_gain_change;
    `source` itself comes back when the rim has min_rim_px pixels or fewer, or no gain differs
    from 1 by more than min_gain_change.
    """
    if cv2.countNonZero(rim) <= min_rim_px:
        return source
    gain = (np.array(cv2.mean(target, rim)[:3]) + 1) / (np.array(cv2.mean(source, rim)[:3]) + 1)
    gain = np.clip(gain, 1 - max_gain_change, 1 + max_gain_change)
    if np.abs(gain - 1).max() <= min_gain_change:
        return source
    return cv2.multiply(source, tuple(gain) + (0.0,))


def lower_face_mask(shape: tuple[int, int], *point_sets: np.ndarray,
                    outline: tuple[int, ...] = LOWER_FACE) -> np.ndarray:
    """Feathered (H, W) float32 mask in [0, 1] of the lower face (`outline`: by default the jaw line
    up to under the nose) outlined by each (468, 2) point set in region pixels; several sets give
    their union."""
    h, w = shape
    k = MASK_REDUCTION
    mask = np.zeros((h // k, w // k), np.uint8)
    for pts in point_sets:
        cv2.fillPoly(mask, [np.round(pts[list(outline)] / k).astype(np.int32)], 255)
    grow = max(1, int(LOWER_FACE_GROW_FRACTION * w / k))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    small = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), LOWER_FACE_FEATHER_FRACTION * w / k)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def blend_lower_face(base: np.ndarray, src: np.ndarray, base_pts: np.ndarray, src_pts: np.ndarray, *,
                     outline: tuple[int, ...] = LOWER_FACE) -> np.ndarray:
    """`base` (S, S, 3) uint8 with the lower face of `src` (already aligned onto it) blended in under
    the mask (`outline`) of both point sets, `src` colour-matched to `base` on the mask's rim."""
    alpha = lower_face_mask(base.shape[:2], base_pts, src_pts, outline=outline)
    x0, y0, bw, bh = cv2.boundingRect((alpha > BLEND_MIN_ALPHA).astype(np.uint8))
    if bw == 0 or bh == 0:
        return base
    win = np.s_[y0:y0 + bh, x0:x0 + bw]
    a = np.ascontiguousarray(alpha[win])
    b, s = np.ascontiguousarray(base[win]), np.ascontiguousarray(src[win])
    rim_low, rim_high = BLEND_RIM_ALPHA
    rim = ((a > rim_low) & (a < rim_high)).astype(np.uint8)
    s = match_colour_on_rim(s, b, rim, min_rim_px=BLEND_RIM_MIN_PX, max_gain_change=BLEND_MAX_GAIN_CHANGE)
    out = base.copy()
    out[win] = cv2.blendLinear(s, b, a, 1.0 - a)
    return out
