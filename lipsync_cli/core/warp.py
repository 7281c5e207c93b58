"""Opening and closing a mouth by warping its region image (the inner mouth, where the image has
none to stretch, is drawn by `interior`).

Distances across the mouth are measured in half-widths of its inner lip line (`hw`, the centre to
an inner corner) or, for the opening profile, in `u`: -1..1 across the part of that line that opens
(SLIT_FRACTION of it, or DRAWN_SLIT_FRACTION where the inside is drawn). Vertical distances are region pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from lipsync_cli.core.interior import FILMED_WALL_SHADE, WALL_SHADE, InteriorLook, draw_interior, interior_look
from lipsync_cli.core.region import channel_difference, smoothstep
from lipsync_cli.media import face as F

UPPER_SHARE = 0.12  # of an opening, how much the upper lip rises in the middle (the jaw does the rest, as in people;
# more reads as a shut mouth to the landmark tracker)
SLIT_FRACTION = 0.8  # the share of the inner-lip width that opens or closes; the corners stay together...
DRAWN_SLIT_FRACTION = 0.92  # ...and that opens where the inner mouth is drawn on a face never filmed talking
# (0.8 until stop 24: a tall bowl that the landmark tracker read as a smaller opening than this wider
# oval; a talking video's mouths keep the shape of its own, filmed ones)
STRETCH_MAX = 2.5  # how far a real inner mouth may be stretched before it is drawn instead
ROLL_MIN_DEG = 2.0  # a head tilted further than this in the picture is warped along its own axis
# (`warp_lips_upright`)...
UPRIGHT_MIN_DROP_PX = 2.0  # ...when its mouth opens by more than this: a closing, or the small moves that bring
# resting lips to the rest gap, go straight down (at 15 degrees a 2-px drop leans by half a pixel), and keep
# their pixels sharp (turned upright and back, they are resampled twice)
MIN_MOUTH_WIDTH_PX = 4  # inner corners closer than this: no mouth to warp
MIN_GAP_CHANGE_PX = 0.6  # a gap this close to the target is left as it is...
MIN_SCALE_CHANGE = 0.01  # ...unless the width changes by more than this factor
# the jaw: the whole lower face below the mouth drops with the opening, the chin most (the jaw turns
# about the ears), the jawline with it, the neck below stays; distances across in shares of the
# jaw's half-width (mouth centre to the jawline at 58 / 288) on each side
JAW_LOWER = (58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288)  # angle, chin, angle
JAW_SIDE_SHARE = 0.35  # at the jaw's angles the face drops this share of the chin's drop...
JAW_OUTSIDE_FADE = 0.3  # ...and beyond them it fades to nothing over this share of the half-width
JAW_RAMP_SHARE = 0.9  # beside the opening the cheek reaches the jaw's drop over this share of lip-to-jawline
WORK_TOP_SHARE = 0.3  # the work window starts this share of the way from the nose base down to the upper lip
WORK_MARGIN_PX = 4  # the window reaches below the jawline by the fade, the drop and this margin
MIN_WORK_PX = 4  # a window narrower or shorter than this is not worth warping
# the opening profile across the mouth (a function of u)
OPEN_LENS_POWER = 0.5  # opening: the lower lip drops (1 - u^2) ** this, rounded between the corners (a pointed lens reads shut)...
UPPER_LIFT_POWER = 1.2  # ...the upper lip rises (1 - u^2) ** this: most in the middle, the corners stay nearly shut
CLOSE_PROFILE_ORDER = 6  # closing: (1 - u^6) ** CLOSE_PROFILE_POWER, fuller so no sliver of gap stays
CLOSE_PROFILE_POWER = 0.5
LIP_LIFT_HALF_WIDTH = 1.6  # columns this many u out no longer rise with the upper lip
SKIN_RAMP_HALF_WIDTHS = 0.9  # the shortest ramp (in hw) of the skin beside the slit to the full shift
CHIN_FADE_SHARE = 0.45  # below the jawline the shift fades out over this share of the lower lip-to-chin distance...
FADE_PER_DROP = 1.6  # ...and over at least this many times the drop (the neck is squeezed, never folded)
CORNER_DROP_SHARE = 0.3  # the mouth's corners go down this share of the lower lip's drop (the jaw pulls them)...
CORNER_FADE_SHARE = 0.6  # ...and the skin above them follows, less and less, up this share of the lip-to-nose distance
NOSE_FADE_SHARE = 0.8  # above the upper lip the shift fades out over this share of the lip-to-nose distance
MIN_FADE_PX = 4.0  # the shortest fade
MIN_LIFT_PX = 1.5  # lift_jaw: a jaw this close to where it should be is left alone
INVERSE_STEPS = 3  # fixed-point steps inverting the lower displacement field (enough below 1 px)
MIN_SPAN_PX = 1e-3  # guards the division by the new gap's height
# lips spread (wide) or purse (round): columns squeeze about the centre under a Gaussian bell
SPREAD_HALF_WIDTHS = 1.6  # the bell's horizontal scale, in hw
SPREAD_HALF_HEIGHTS = 1.2  # its vertical scale about the gap's centre, in hw
MIN_STRETCH_GAP_PX = 2.0  # a source gap narrower than this has no inner mouth to stretch
MIN_DRAWN_GAP_PX = 1.0  # the inner mouth is drawn only where the new gap is wider than this

INTERIOR_MARGIN_PX = 4  # the painted box reaches this far past the opening (the blurs' reach)


def _contour_y(pts: np.ndarray, idx: tuple[int, ...], xs: np.ndarray) -> np.ndarray:
    """The y of the contour through landmarks `idx`, interpolated at columns `xs`."""
    c = pts[list(idx)]
    order = np.argsort(c[:, 0])
    return np.interp(xs, c[order, 0], c[order, 1])


def _centre_lips_y(pts: np.ndarray) -> tuple[float, float]:
    """The inner upper and lower lip's y midway between the inner corners."""
    cx = np.array([(pts[F.MOUTH_RIGHT_INNER, 0] + pts[F.MOUTH_LEFT_INNER, 0]) / 2])
    return float(_contour_y(pts, F.LIPS_INNER_UPPER, cx)[0]), float(_contour_y(pts, F.LIPS_INNER_LOWER, cx)[0])


def chin_after_warp(pts: np.ndarray, target_gap_px: float) -> float:
    """Where `warp_lips` puts the chin (its y, region pixels) when it takes this mouth to `target_gap_px`."""
    top, bottom = _centre_lips_y(pts)
    return float(pts[F.CHIN, 1]) + (1 - UPPER_SHARE) * (target_gap_px - max(0.0, bottom - top))


def lift_jaw(img: np.ndarray, pts: np.ndarray, lift_px: float) -> np.ndarray:
    """`img` (S, S, 3) with its lower face raised by `lift_px` region pixels at the chin, before another
    frame's lower face is blended onto it: the chin and jawline then sit under the new mouth instead
    of showing through the blend's soft edge as a second, lower chin. As `warp_lips` moves a jaw: all
    of it at the chin, JAW_SIDE_SHARE at the angles, none beyond; from nothing at the upper lip (which
    stays) to all of it at the lower lip; fading out below the jawline (the neck stretches). A smaller lift returns `img`."""
    if lift_px < MIN_LIFT_PX:
        return img
    size = img.shape[0]
    jaw_pts = pts[list(JAW_LOWER)]
    cx = float(pts[F.MOUTH_RIGHT_INNER, 0] + pts[F.MOUTH_LEFT_INNER, 0]) / 2
    side_l = max(cx - float(jaw_pts[:, 0].min()), MIN_FADE_PX)
    side_r = max(float(jaw_pts[:, 0].max()) - cx, MIN_FADE_PX)
    top_y, lip_y = _centre_lips_y(pts)
    fade_px = max(CHIN_FADE_SHARE * (float(pts[F.CHIN, 1]) - lip_y), FADE_PER_DROP * lift_px, MIN_FADE_PX)
    reach = 1 + JAW_OUTSIDE_FADE
    x0, x1 = int(max(0, cx - reach * side_l)), int(min(size, np.ceil(cx + reach * side_r)))
    y0 = int(max(0, top_y))
    y1 = int(min(size, float(jaw_pts[:, 1].max()) + fade_px + WORK_MARGIN_PX))
    if y1 - y0 < MIN_WORK_PX or x1 - x0 < MIN_WORK_PX:
        return img
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    side = np.abs(xs - cx) / np.where(xs < cx, side_l, side_r)
    jaw = (1 - (1 - JAW_SIDE_SHARE) * smoothstep(side)) * (1 - smoothstep((side - 1) / JAW_OUTSIDE_FADE))
    lifted_jaw_y = _contour_y(pts, JAW_LOWER, xs) - lift_px * jaw
    rise = smoothstep((ys - top_y) / max(lip_y - top_y, MIN_FADE_PX))
    fade = 1 - smoothstep((ys - lifted_jaw_y) / fade_px)
    map_y = (ys + lift_px * jaw * rise * fade).astype(np.float32)
    map_x = np.broadcast_to(xs, map_y.shape).astype(np.float32)
    out = img.copy()
    out[y0:y1, x0:x1] = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def _smoothstep_inplace(t: np.ndarray) -> np.ndarray:
    """`region.smoothstep` overwriting `t` (float32), for the large fields worked out several times a warp."""
    np.maximum(t, 0, out=t)
    np.minimum(t, 1, out=t)
    edge = t * np.float32(-2)
    edge += 3
    t *= t
    t *= edge
    return t


def _upsample2(c: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float32 linearly interpolated from `c`, its values at the even rows and columns."""
    def up(a: np.ndarray, n: int, axis: int) -> np.ndarray:
        a = np.moveaxis(a, axis, 0)
        out = np.empty((n,) + a.shape[1:], np.float32)
        out[::2] = a
        out[1::2] = ((a + np.concatenate([a[1:], a[-1:]])) / 2)[:n // 2]
        return np.moveaxis(out, 0, axis)

    return up(up(c.astype(np.float32), cols, 1), rows, 0)


def warp_lips(img: np.ndarray, pts: np.ndarray, *, target_gap_px: float, scale_x: float = 1.0,
              has_interior: bool = True, look: InteriorLook | None = None, filmed: bool = False) -> np.ndarray:
    """Open or close the mouth of a region image to `target_gap_px` at its centre.

    img: (S, S, 3) uint8 BGR region; pts: (468, 2) its landmarks in region pixels. The lower lip and
    jaw move down (the upper lip a little up, the corners a little down) with a lens-shaped opening
    between the inner corners; the skin around follows smoothly. Where the source has a real open
    mouth (`has_interior`) it is stretched; where it has none, the inner mouth is drawn. scale_x > 1
    spreads the lips, < 1 purses them. filmed: the person is filmed talking elsewhere in the video,
    and a drawn mouth takes the shape and light of those filmed ones. Returns a new image, or `img`
    itself when nothing needs to change.
    """
    size = img.shape[0]
    xl, xr = float(pts[F.MOUTH_RIGHT_INNER, 0]), float(pts[F.MOUTH_LEFT_INNER, 0])
    if xr - xl < MIN_MOUTH_WIDTH_PX:
        return img
    cx, hw = (xl + xr) / 2, (xr - xl) / 2
    y_top_c, y_bot_c = _centre_lips_y(pts)
    gap_c = max(0.0, y_bot_c - y_top_c)
    delta = target_gap_px - gap_c
    if abs(delta) < MIN_GAP_CHANGE_PX and abs(scale_x - 1) < MIN_SCALE_CHANGE:
        return img
    chin_y = float(pts[F.CHIN, 1])
    nose_y = float(pts[F.NOSE_BASE, 1])
    jaw_pts = pts[list(JAW_LOWER)]
    side_l = max(cx - float(jaw_pts[:, 0].min()), hw)  # the jaw's half-width either side of the centre
    side_r = max(float(jaw_pts[:, 0].max()) - cx, hw)
    d_low = (1 - UPPER_SHARE) * delta
    d_up = UPPER_SHARE * delta
    fade_px = max(CHIN_FADE_SHARE * (chin_y - y_bot_c), FADE_PER_DROP * abs(d_low), MIN_FADE_PX)
    reach = 1 + JAW_OUTSIDE_FADE
    x0, x1 = int(max(0, cx - reach * side_l)), int(min(size, np.ceil(cx + reach * side_r)))
    y0 = int(max(0, nose_y + WORK_TOP_SHARE * (y_top_c - nose_y)))
    y1 = int(min(size, float(jaw_pts[:, 1].max()) + fade_px + abs(d_low) + WORK_MARGIN_PX))
    if y1 - y0 < MIN_WORK_PX or x1 - x0 < MIN_WORK_PX:
        return img
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    map_shape = (y1 - y0, x1 - x0)
    wide_oval = delta >= 0 and not has_interior and not filmed
    u = (xs - cx) / ((DRAWN_SLIT_FRACTION if wide_oval else SLIT_FRACTION) * hw)
    y_top = _contour_y(pts, F.LIPS_INNER_UPPER, xs).astype(np.float32)
    y_bot = _contour_y(pts, F.LIPS_INNER_LOWER, xs).astype(np.float32)
    inside = np.abs(u) < 1  # outside the opening part the lips stay as the source has them
    right_y, left_y = pts[F.MOUTH_RIGHT_INNER, 1], pts[F.MOUTH_LEFT_INNER, 1]
    y_top = np.where(inside, y_top, np.float32(right_y + (left_y - right_y) * (xs > cx)))
    y_bot = np.where(inside, np.maximum(y_bot, y_top), y_top)
    src_gap = y_bot - y_top
    if delta >= 0:
        slit = np.clip(1 - u ** 2, 0, 1) ** OPEN_LENS_POWER
        slit_up = np.clip(1 - u ** 2, 0, 1) ** UPPER_LIFT_POWER
    else:
        slit = slit_up = np.clip(1 - u ** CLOSE_PROFILE_ORDER, 0, 1) ** CLOSE_PROFILE_POWER
    # how much each column follows the jaw: all of it at the chin, JAW_SIDE_SHARE at the angles, none outside
    side = np.abs(xs - cx) / np.where(xs < cx, side_l, side_r)
    jaw = (1 - (1 - JAW_SIDE_SHARE) * smoothstep(side)) * (1 - smoothstep((side - 1) / JAW_OUTSIDE_FADE))
    jaw_y = np.maximum(_contour_y(pts, JAW_LOWER, xs), y_bot + MIN_FADE_PX).astype(np.float32)
    ramp_px = np.maximum(JAW_RAMP_SHARE * (jaw_y - y_bot), SKIN_RAMP_HALF_WIDTHS * hw).astype(np.float32)
    lip_up = 0.5 * (1 + np.cos(np.pi * np.clip(u / LIP_LIFT_HALF_WIDTH, -1, 1)))

    # the mouth's corners go down with the jaw by CORNER_DROP_SHARE of its drop (the lips stay together
    # there), and the lower lip between them takes the rest as the slit opens
    corner = CORNER_DROP_SHARE * (1 - slit)
    lip_drop = corner + slit
    half = np.s_[::2]  # the jaw's drop is worked out on every other row and column (see below)
    lip_drop_h = np.ascontiguousarray(lip_drop[half])
    # (y - y_bot) / ramp_px and (y - jaw_y) / fade_px as y * scale + offset, per column
    ramp_scale = np.ascontiguousarray(1 / ramp_px[half])
    ramp_offset = -y_bot[half] * ramp_scale
    fade_offset = np.ascontiguousarray(-jaw_y[half] / np.float32(fade_px))
    drop_h = np.ascontiguousarray(d_low * jaw[half])

    def lower_shift(y: np.ndarray) -> np.ndarray:
        """The jaw's drop at source rows `y` of every other column: right under the lip, the lip's own
        drop (all of it in the middle of the slit, CORNER_DROP_SHARE of it at the ends and beside),
        ramping up to all of it below, fading out below the jawline (worked out in place: it runs
        INVERSE_STEPS + 1 times a warp)."""
        ramp = _smoothstep_inplace(np.multiply(y, ramp_scale) + ramp_offset)
        ramp *= 1 - lip_drop_h
        ramp += lip_drop_h
        fade = _smoothstep_inplace(np.multiply(y, np.float32(1 / fade_px)) + fade_offset)
        np.subtract(1, fade, out=fade)
        ramp *= fade
        ramp *= drop_h
        return ramp

    corner_px = (d_low * jaw * corner).astype(np.float32)
    new_top = y_top - d_up * lip_up * slit_up + corner_px
    new_bot = y_bot + d_low * jaw * lip_drop
    # rows above the lowest new lower lip take the upper lip's rise or the stretched gap; rows below
    # the highest one the jaw's drop; only the band between needs both (each is worked out only where needed)
    rows_n = len(ys)
    r_hi = int(np.clip(np.ceil(float(new_bot.max()) - y0), 0, rows_n))
    r_lo = int(np.clip(np.ceil(float(new_bot.min()) - y0), 0, r_hi)) // 2 * 2  # even: the lower field's grid
    ys_up = ys[:r_hi]
    above = y_top - ys_up
    # the upper lip's rise: ramping out beside the slit, fading out towards the nose (in place)
    src_y_upper = _smoothstep_inplace(above * np.float32(1 / (SKIN_RAMP_HALF_WIDTHS * hw)))
    src_y_upper *= 1 - slit_up
    src_y_upper += slit_up
    fade_nose = _smoothstep_inplace(above * np.float32(1 / max(NOSE_FADE_SHARE * (y_top_c - nose_y), MIN_FADE_PX)))
    np.subtract(1, fade_nose, out=fade_nose)
    src_y_upper *= fade_nose
    src_y_upper *= d_up * lip_up
    src_y_upper += ys_up
    # the corners' drop, fading out above them: a gentler field than the jaw's (a fraction of its drop),
    # inverted by INVERSE_STEPS evaluations in all
    corner_fade = np.float32(1 / max(CORNER_FADE_SHARE * (y_top_c - nose_y), MIN_FADE_PX))

    def corner_shift(y: np.ndarray) -> np.ndarray:
        fade = _smoothstep_inplace((y_top - y) * corner_fade)
        np.subtract(1, fade, out=fade)
        fade *= corner_px
        return fade

    if np.any(corner_px):
        src_c = ys_up - corner_shift(ys_up)
        for _ in range(INVERSE_STEPS - 1):
            src_c = ys_up - corner_shift(src_c)
        src_y_upper += src_c - ys_up
    # rows inside the new opening take the source's gap, stretched
    in_gap = (ys_up > new_top) & (ys_up < new_bot)
    t = np.subtract(ys_up, new_top) * (1 / np.maximum(new_bot - new_top, MIN_SPAN_PX))
    np.clip(t, 0, 1, out=t)
    np.copyto(src_y_upper, y_top + t * src_gap, where=in_gap)
    # destination -> source rows (inverse map): the lower field is smooth, so it is inverted by
    # fixed-point steps on every other row and column and filled in between (a quarter of the work)
    ys_low = ys[r_lo:]
    ys_c = ys_low[half]
    src_c = ys_c - lower_shift(ys_c)
    for _ in range(INVERSE_STEPS):
        src_c = ys_c - lower_shift(src_c)
    src_y_low = ys_low + _upsample2(src_c - ys_c, rows_n - r_lo, map_shape[1])
    map_y = np.empty(map_shape, np.float32)
    map_y[:r_lo] = src_y_upper[:r_lo]
    map_y[r_lo:r_hi] = np.where(ys[r_lo:r_hi] >= new_bot, src_y_low[:r_hi - r_lo], src_y_upper[r_lo:])
    map_y[r_hi:] = src_y_low[r_hi - r_lo:]
    bell_x = np.exp(-(((xs - cx) / (SPREAD_HALF_WIDTHS * hw)) ** 2))  # a Gaussian: one row times one column
    bell_y = np.exp(-(((ys - (y_top_c + y_bot_c) / 2) / (SPREAD_HALF_HEIGHTS * hw)) ** 2))
    map_x = xs - bell_y * ((xs - cx) * (1 - 1 / scale_x) * bell_x).astype(np.float32)  # (rows, cols)
    patch = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # the source's own inner mouth is stretched up to STRETCH_MAX; past that it would smear, so it is drawn
    stretch_ok = has_interior & (src_gap >= MIN_STRETCH_GAP_PX) & (src_gap * STRETCH_MAX >= new_bot - new_top)
    need = in_gap & ~stretch_ok & (new_bot - new_top > MIN_DRAWN_GAP_PX)  # rows below r_hi are never in the gap
    rows, cols = np.flatnonzero(need.any(axis=1)), np.flatnonzero(need.any(axis=0))
    if len(rows):
        # only the box around the opening (and its soft edge) is painted: the window is the whole jaw
        r0, r1 = max(0, rows[0] - INTERIOR_MARGIN_PX), min(rows_n, rows[-1] + 1 + INTERIOR_MARGIN_PX)
        c0, c1 = max(0, cols[0] - INTERIOR_MARGIN_PX), min(len(xs), cols[-1] + 1 + INTERIOR_MARGIN_PX)
        need_box, t_box = np.zeros((r1 - r0, c1 - c0), bool), np.ones((r1 - r0, c1 - c0), np.float32)
        need_box[:r_hi - r0] = need[r0:r1, c0:c1]  # below the gap t is 1 (at the lower lip) and nothing is needed
        t_box[:r_hi - r0] = t[r0:r1, c0:c1]
        box = np.s_[r0:r1, c0:c1]
        look = look or interior_look([img], [pts])
        patch[box] = draw_interior(patch[box], need_box, t_box, u[c0:c1], new_top[c0:c1], new_bot[c0:c1],
                                    look, 2 * hw, wall_shade=FILMED_WALL_SHADE if filmed else WALL_SHADE)
    out = img.copy()
    out[y0:y1, x0:x1] = patch
    return out


def warp_lips_upright(img: np.ndarray, pts: np.ndarray, *, target_gap_px: float, **kwargs) -> np.ndarray:
    """`warp_lips` along the face's own axis. A head tilted in the picture (the line between the outer
    eye corners more than ROLL_MIN_DEG from level) whose mouth opens by more than UPRIGHT_MIN_DROP_PX is
    turned upright about the mouth, warped and turned back, so the jaw drops along the face instead of
    straight down; the pixels the warp leaves alone are kept as they were (not resampled twice).
    Returns `img` itself when nothing needs to change."""
    eyes = pts[F.LEFT_EYE_OUTER] - pts[F.RIGHT_EYE_OUTER]
    roll_deg = math.degrees(math.atan2(float(eyes[1]), float(eyes[0])))
    top, bottom = _centre_lips_y(pts)
    if abs(roll_deg) < ROLL_MIN_DEG or target_gap_px - max(0.0, bottom - top) < UPRIGHT_MIN_DROP_PX:
        return warp_lips(img, pts, target_gap_px=target_gap_px, **kwargs)
    centre = (pts[F.MOUTH_RIGHT_INNER] + pts[F.MOUTH_LEFT_INNER]) / 2
    size = img.shape[1::-1]
    turn = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), roll_deg, 1.0)
    upright = cv2.warpAffine(img, turn, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    warped = warp_lips(upright, pts @ turn[:, :2].T + turn[:, 2], target_gap_px=target_gap_px, **kwargs)
    if warped is upright:
        return img
    back = cv2.invertAffineTransform(turn)
    changed = cv2.warpAffine(channel_difference(warped, upright), back, size, flags=cv2.INTER_NEAREST) > 0
    out = img.copy()
    out[changed] = cv2.warpAffine(warped, back, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[changed]
    return out
