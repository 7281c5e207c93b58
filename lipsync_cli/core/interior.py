"""The inner mouth drawn where a warp opens lips that show none: walls, a dark back, a row of upper
teeth (one tooth beside the next, ivory in the colour of the light on the face), a tongue and lower
teeth, in one person's colours (`InteriorLook`, measured once), so the inside of the mouth is the same
thing from frame to frame.

Across the mouth, `u` runs -1..1 over the part of the inner lip line that opens (see `warp`); down
it, `t` runs 0 at the new upper lip to 1 at the new lower lip. Sizes are region pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync_cli.core.region import smoothstep
from lipsync_cli.media import face as F

# the drawn inner mouth, in this person's colours (`InteriorLook`): BGR factors on the lip colour.
# A person's open mouth is dark red-brown near the lips (wet inner lips, palate, cheeks catch some
# light) and near black at the back; the upper teeth show as a band partly under the lip, in the
# mouth's shade; the tongue lies low in a wide opening; lower teeth rarely show.
DEFAULT_LIP_BGR = (90, 90, 150)  # when the lips cannot be found
DEFAULT_SKIN_LEVEL = 160.0  # grey level of the face when the skin cannot be measured
SKIN_POINTS = (50, 280, 205, 425)  # cheeks under the eyes and beside the nose, lit as the face is
SKIN_PATCH_SHARE = 0.15  # each skin patch's half-side, as a share of the inner-lip width
INTERIOR_TINT_BGR = (0.62, 0.66, 0.9)  # the inside's hue against the lips': redder-brown, never pink
WALL_SHADE = 0.25  # brightness (times tint x lip colour) at the lips' inner edges (brighter, or a red tongue
# against the lower lip, and the landmark tracker puts the lower lip higher: the mouth reads shut)...
FILMED_WALL_SHADE = 0.4  # ...beside a talking video's own filmed mouths, as lit as theirs (0.25 there put the
# speaker's tuning clip at 0.90 closed in silence, from 0.93)...
BACK_SHADE = 0.07  # ...and at the back of a wide-open mouth (the throat)
DEEP_GAP_SHARE = 0.35  # an opening this tall (a share of the inner-lip width) shows the full depth;
# a narrower one is shallow: all wall, no black
BACK_CENTRE_T = 0.7  # the darkest point sits this far down the opening (dark above the lower lip: the tracker finds it)
BACK_HALF_WIDTH_U = 0.7  # the dark back's half-width (u) ...
BACK_HALF_HEIGHT_T = 0.5  # ... and half-height (share of the gap)
TEETH_MIN_GAP_PX = 3.0  # upper teeth start to show at this gap ...
TEETH_FULL_GAP_PX = 8.0  # ... and are fully there from this one (no popping between frames)
TEETH_TINT_BGR = (0.86, 0.93, 1.0)  # ivory...
TEETH_LIGHT_TINT = 0.5  # ...in the light that falls on the face: this power of the skin's colour over its grey
TEETH_SKIN_GAIN = 1.3  # the teeth catch the light as enamel does: at their edge a little brighter than the skin...
TEETH_MIN_LEVEL, TEETH_MAX_LEVEL = 130.0, 215.0  # ...within these grey levels
TEETH_GAP_SHARE = 0.45  # the upper teeth show at most this share of the gap...
TEETH_WIDTH_SHARE = 0.25  # ...and of the inner-lip width
TEETH_HALF_SPAN = 0.9  # no teeth beyond this |u| (the canines turn away into the shade)
TEETH_EDGE_PX = 1.5  # the teeth's free edge blends over this many pixels
TEETH_EDGE_ORDER = 4  # the free edge is (1 - side^this) ** 0.5: a flat arc that turns up at the band's ends
TEETH_CORNER_DARKEN = 0.9  # teeth light falls by this times (u / span)^TEETH_CORNER_ORDER towards the sides
TEETH_CORNER_ORDER = 2.5  # (the front teeth are lit alike; the light falls where the arch turns away)
TEETH_ROOT_LIGHT = 0.85  # under the upper lip (its shadow) the teeth are this bright, full at their edge
# where one upper tooth meets the next, as a share of the band's half-span from the middle: the front
# teeth are widest and the ones further round narrow with the arch
TOOTH_BOUNDARIES = (0.0, 0.28, 0.5, 0.68, 0.82)
TOOTH_SEAM_PX = 0.7  # a seam between two teeth is this wide (Gaussian half-width)...
TOOTH_SEAM_DARKEN = 0.22  # ...and this much darker...
TOOTH_NOTCH_PX = 1.6  # ...and their free edges round off into a notch this wide...
TOOTH_NOTCH_SHARE = 0.12  # ...that shortens the band there by this share
TEETH_OPACITY = 0.9
LOWER_TEETH_MIN_GAP_PX = 14.0  # lower teeth show only in wide openings...
LOWER_TEETH_GAP_SHARE = 0.08  # ...at most this share of the gap...
LOWER_TEETH_HALF_SPAN = 0.4  # ...in the middle only
LOWER_TEETH_LIGHT = 0.45  # they sit in the lower lip's and the tongue's shade
TONGUE_MIN_GAP_PX = 14.0  # a tongue starts to show at this gap (wide vowels)...
TONGUE_FULL_GAP_PX = 26.0  # ...fully from this one
TONGUE_HALF_WIDTH = 0.75  # the tongue's half-width in u
TONGUE_HEIGHT_SHARE = 0.3  # its height as a share of the gap (0.16 until stop 30)
TONGUE_TINT_BGR = (0.55, 0.58, 0.95)  # its hue against the lips'
TONGUE_TOP_SHADE, TONGUE_LOW_SHADE = 0.75, 0.45  # its lit top and its shaded front, behind the lower lip
# (0.45 and 0.3 until stop 30)
TONGUE_OPACITY = 0.9  # set back in the shade (0.6 until stop 30: a wide opening read as a black hole)
EDGE_BLUR_KERNEL_PX, EDGE_BLUR_SIGMA_PX = 5, 1.0  # the drawn interior's edge softness
COLOUR_BLUR_SIGMA_PX = 0.9  # the drawn interior is this soft (a real one is never sharp)


@dataclass(frozen=True)
class InteriorLook:
    """The colours a drawn inner mouth is made of, for one person: measured once (`interior_look`)
    and reused on every frame, so the inside of the mouth does not change from frame to frame (what
    follows from them is worked out once too)."""

    lip_bgr: tuple[float, float, float]  # mean colour of the lips
    skin_bgr: tuple[float, float, float]  # colour of the lit face: the teeth are lit alike, in its light

    @functools.cached_property
    def skin_level(self) -> float:
        """The face's grey level."""
        return _grey(np.array(self.skin_bgr, np.float32))

    @functools.cached_property
    def teeth_bgr(self) -> np.ndarray:
        """(3,) BGR factors on the teeth's grey level: ivory, in the colour of the light on this face."""
        skin = np.maximum(np.array(self.skin_bgr, np.float32), 1.0)
        light = (skin / max(self.skin_level, 1.0)) ** TEETH_LIGHT_TINT
        colour = np.array(TEETH_TINT_BGR, np.float32) * light
        return colour / _grey(colour)


def interior_look(images: list[np.ndarray], points: list[np.ndarray]) -> InteriorLook:
    """The median look over some region images (S, S, 3) uint8 BGR with their (468, 2) landmarks."""
    lips = np.array([_lip_colour(img, pts) for img, pts in zip(images, points)], np.float32)
    skins = np.array([_skin_colour(img, pts) for img, pts in zip(images, points)], np.float32)
    if len(lips) == 0:
        return InteriorLook(DEFAULT_LIP_BGR, (DEFAULT_SKIN_LEVEL,) * 3)
    lip, skin = np.median(lips, axis=0), np.median(skins, axis=0)
    return InteriorLook((float(lip[0]), float(lip[1]), float(lip[2])), (float(skin[0]), float(skin[1]), float(skin[2])))


def _grey(bgr: np.ndarray) -> float:
    """The grey level of one (3,) float BGR colour (as OpenCV weighs the channels)."""
    return float(cv2.cvtColor(bgr.reshape(1, 1, 3).astype(np.float32), cv2.COLOR_BGR2GRAY)[0, 0])


def _lip_colour(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(3,) float32 BGR: the mean colour of the lips (between their outer and inner outlines)."""
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(pts[list(F.LIPS_OUTER)]).astype(np.int32)], 255)
    cv2.fillPoly(mask, [np.round(pts[list(F.LIPS_INNER)]).astype(np.int32)], 0)
    if mask.any():
        return np.array(cv2.mean(img, mask)[:3], np.float32)
    return np.array(DEFAULT_LIP_BGR, np.float32)


def _skin_colour(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(3,) BGR: the median colour of small patches of cheek skin (grey DEFAULT_SKIN_LEVEL when none is
    in the image)."""
    half = max(1, int(SKIN_PATCH_SHARE * (pts[F.MOUTH_LEFT_INNER, 0] - pts[F.MOUTH_RIGHT_INNER, 0])))
    colours = []
    for x, y in np.round(pts[list(SKIN_POINTS)]).astype(int):
        patch = img[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1]
        if patch.size:
            colours.append(np.median(patch.reshape(-1, 3), axis=0))
    return np.median(colours, axis=0) if colours else np.full(3, DEFAULT_SKIN_LEVEL, np.float32)


def draw_interior(patch, need, t, u, new_top, new_bot, look: InteriorLook, inner_width_px: float, *,
                  wall_shade: float = WALL_SHADE) -> np.ndarray:
    """Paint a shaded inner mouth (walls, dark back, upper teeth, tongue, lower teeth) into the gap pixels.

    patch: (R, C, 3) uint8 rows of the work window; need: (R, C) bool, the pixels to paint; t: (R, C)
    0 at the new upper lip to 1 at the new lower lip; u, new_top, new_bot: (C,) per column. The
    result depends only on these and `look`, and changes smoothly with the opening: equal openings
    give equal interiors, near-equal ones near-equal interiors (every part fades in with the gap).
    """
    lip = np.array(look.lip_bgr, np.float32)
    gap_px = np.maximum(new_bot - new_top, 0)[None, :]  # per column
    full_gap = float(gap_px.max())
    au = np.abs(u)[None, :]
    depth_px = t * gap_px  # distance below the upper lip
    height_px = (1 - t) * gap_px  # distance above the lower lip
    # walls near the lips, a dark back in the middle whose depth grows with the opening
    deep = smoothstep(full_gap / max(DEEP_GAP_SHARE * inner_width_px, 1.0))
    back = np.exp(-((au / BACK_HALF_WIDTH_U) ** 2 + ((t - BACK_CENTRE_T) / BACK_HALF_HEIGHT_T) ** 2))
    shade = wall_shade - (wall_shade - BACK_SHADE) * deep * back
    colour = shade[..., None] * (lip * np.array(INTERIOR_TINT_BGR, np.float32))
    ivory = look.teeth_bgr
    level = min(TEETH_MAX_LEVEL, max(TEETH_MIN_LEVEL, TEETH_SKIN_GAIN * look.skin_level))
    if full_gap > TONGUE_MIN_GAP_PX:  # tongue: a mound low in the mouth, lit on top
        show = smoothstep((full_gap - TONGUE_MIN_GAP_PX) / (TONGUE_FULL_GAP_PX - TONGUE_MIN_GAP_PX))
        top = TONGUE_HEIGHT_SHARE * gap_px * np.sqrt(np.clip(1 - (au / TONGUE_HALF_WIDTH) ** 2, 0, 1))
        on = np.clip((top - height_px) / TEETH_EDGE_PX, 0, 1)
        light = TONGUE_LOW_SHADE + (TONGUE_TOP_SHADE - TONGUE_LOW_SHADE) * np.clip(height_px / np.maximum(top, 1), 0, 1)
        tongue = lip * np.array(TONGUE_TINT_BGR, np.float32)
        _lay_over(colour, TONGUE_OPACITY * show * on, lambda r: tongue * light[r][..., None])
    if full_gap > TEETH_MIN_GAP_PX:  # upper teeth: a band under the upper lip, narrowing to the sides
        show = smoothstep((full_gap - TEETH_MIN_GAP_PX) / (TEETH_FULL_GAP_PX - TEETH_MIN_GAP_PX))
        band = np.minimum(TEETH_GAP_SHARE * gap_px, TEETH_WIDTH_SHARE * inner_width_px)
        # pixels per unit of |u| / TEETH_HALF_SPAN (u is linear in the column): the seams' widths are pixels
        px_per_side = TEETH_HALF_SPAN / max(float(np.abs(np.diff(u)).mean()), 1e-6) if len(u) > 1 else 1.0
        on, light = _teeth(depth_px, band, au / TEETH_HALF_SPAN, TEETH_ROOT_LIGHT,
                           seams=_tooth_seams(au / TEETH_HALF_SPAN, px_per_side))
        _lay_over(colour, TEETH_OPACITY * show * on, lambda r: ivory * (level * light[r])[..., None])
    if full_gap > LOWER_TEETH_MIN_GAP_PX:  # lower teeth: a dim edge just above the lower lip's middle
        band = LOWER_TEETH_GAP_SHARE * (gap_px - LOWER_TEETH_MIN_GAP_PX)
        on, light = _teeth(height_px, band, au / LOWER_TEETH_HALF_SPAN, TEETH_ROOT_LIGHT)
        _lay_over(colour, TEETH_OPACITY * on, lambda r: ivory * (level * LOWER_TEETH_LIGHT * light[r])[..., None])
    kernel = (EDGE_BLUR_KERNEL_PX, EDGE_BLUR_KERNEL_PX)
    alpha = cv2.GaussianBlur(need.astype(np.float32), kernel, EDGE_BLUR_SIGMA_PX)[..., None]
    colour = cv2.GaussianBlur(colour, (0, 0), COLOUR_BLUR_SIGMA_PX)
    out = patch.astype(np.float32)  # patch + (colour - patch) * alpha, in place
    colour -= out
    colour *= alpha
    out += colour
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _lay_over(colour: np.ndarray, opacity: np.ndarray, paint) -> None:
    """Lay `paint(rows)` (a row slice -> (rows, C, 3)) over `colour` (R, C, 3) float32 in place, at
    `opacity` (R, C); only the rows the opacity reaches are worked on (a layer covers a band)."""
    rows = np.flatnonzero(opacity.any(axis=1))
    if len(rows):
        r = np.s_[rows[0]:rows[-1] + 1]
        m = opacity[r][..., None]
        colour[r] = colour[r] * (1 - m) + paint(r) * m


def _tooth_seams(side: np.ndarray, px_per_side: float) -> tuple[np.ndarray, np.ndarray]:
    """(seam, notch) per column of `side` (|u| over the band's half-span): each 1 on the line where one
    tooth meets the next (TOOTH_BOUNDARIES) and falling off over TOOTH_SEAM_PX / TOOTH_NOTCH_PX."""
    away_px = np.min(np.abs(side[..., None] - np.array(TOOTH_BOUNDARIES, np.float32)), axis=-1) * px_per_side
    return np.exp(-(away_px / TOOTH_SEAM_PX) ** 2), np.exp(-(away_px / TOOTH_NOTCH_PX) ** 2)


def _teeth(depth_px, height_px, side, root_light: float, *, seams: tuple[np.ndarray, np.ndarray] | None = None):
    """(opacity, light) of a band of teeth `height_px` deep from its root (depth 0); `side` is |u|
    over the band's half-span (0 in the middle, 1 where it ends): the band shortens and darkens there.
    `seams` (`_tooth_seams`): where single teeth meet, a darker line and a notch in the free edge."""
    h = height_px * np.sqrt(np.clip(1 - side ** TEETH_EDGE_ORDER, 0, 1))
    if seams is not None:
        h = h * (1 - TOOTH_NOTCH_SHARE * seams[1])
    on = np.clip((h - depth_px) / TEETH_EDGE_PX, 0, 1) * (h > 0)
    light = np.clip(1 - TEETH_CORNER_DARKEN * side ** TEETH_CORNER_ORDER, 0, 1) * (
        root_light + (1 - root_light) * np.clip(depth_px / np.maximum(h, 1), 0, 1))
    if seams is not None:
        light = light * (1 - TOOTH_SEAM_DARKEN * seams[0])
    return on, light
