"""The lip warp on real regions of the sample avatar: the lips part by the wanted gap and the jaw goes with them.

The opening is measured on the warped image itself, by tracking where the lips went: a strip of the
upper lip and one of the lower lip (and of the chin, and of the neck) on the centre columns are
matched against the warped image at sub-pixel vertical shifts. The new gap is the old one plus how
far the two lips moved apart.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync_cli.core.interior import interior_look
from lipsync_cli.core.warp import MIN_LIFT_PX, chin_after_warp, lift_jaw, warp_lips, warp_lips_upright
from lipsync_cli.media import face as F

FRAMES = (0, 100)
GAP_TOLERANCE = 0.15  # the measured gap is within this share of the target
SEARCH_PX, SEARCH_STEP_PX = 30.0, 0.1  # vertical shifts tried when tracking a strip


def vertical_shift(before: np.ndarray, after: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> float:
    """How far (px, + is down) the strip before[rows, cols] moved in `after`: the shift s for which
    after[y + s] matches before[y] best (least squared grey-level difference)."""
    grey_before = cv2.cvtColor(before, cv2.COLOR_BGR2GRAY).astype(np.float32)
    grey_after = cv2.cvtColor(after, cv2.COLOR_BGR2GRAY).astype(np.float32)
    ref = grey_before[rows[0]:rows[1], cols[0]:cols[1]]
    xs = np.arange(*cols, dtype=np.float32)
    shifts = np.arange(-SEARCH_PX, SEARCH_PX + SEARCH_STEP_PX, SEARCH_STEP_PX)
    errors = []
    for s in shifts:
        map_x, map_y = np.meshgrid(xs, np.arange(*rows, dtype=np.float32) + np.float32(s))
        moved = cv2.remap(grey_after, map_x, map_y, cv2.INTER_LINEAR)
        errors.append(float(((moved - ref) ** 2).mean()))
    return float(shifts[int(np.argmin(errors))])


class Mouth:
    """Where the lips, chin and nose of one region are (region pixels, from its landmarks)."""

    def __init__(self, pts: np.ndarray):
        xl, xr = pts[F.MOUTH_RIGHT_INNER, 0], pts[F.MOUTH_LEFT_INNER, 0]
        cx, hw = (xl + xr) / 2, (xr - xl) / 2
        self.top, self.bottom = float(pts[F.INNER_TOP, 1]), float(pts[F.INNER_BOTTOM, 1])
        self.chin, self.nose = float(pts[F.CHIN, 1]), float(pts[F.NOSE_BASE, 1])
        self.cols = (int(cx - 0.2 * hw), int(cx + 0.2 * hw) + 1)  # the centre, where the mouth opens fully
        self.gap = self.bottom - self.top
        lip_to_chin = self.chin - self.bottom
        # the strips tracked: just above the inner lip line, just below it, above the chin, the neck
        self.upper_lip = (int(self.top - 0.1 * (self.top - self.nose)) - 1, int(self.top) - 1)
        self.lower_lip = (int(self.bottom) + 2, int(self.bottom + 0.5 * lip_to_chin))
        self.above_chin = (int(self.chin - 0.25 * lip_to_chin), int(self.chin))
        # the neck below the jaw's fade (the skin just under the chin is squeezed as the jaw drops over it)
        self.neck = (int(self.chin + 0.9 * lip_to_chin), int(self.chin + 1.15 * lip_to_chin))


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("target_gap_px", [12.0, 24.0, 36.0])
def test_lips_open_to_the_target_gap_and_the_jaw_drops(sample_model, frame, target_gap_px):
    region, pts = sample_model.region(frame), sample_model.region_points(frame)
    mouth = Mouth(pts)
    assert mouth.gap < 0.3 * target_gap_px  # the sample's mouth is (nearly) closed: the warp does the opening
    warped = warp_lips(region, pts, target_gap_px=target_gap_px, has_interior=False)
    assert warped.shape == region.shape and warped.dtype == np.uint8

    up = -vertical_shift(region, warped, mouth.upper_lip, mouth.cols)
    down = vertical_shift(region, warped, mouth.lower_lip, mouth.cols)
    assert up > 0 and down > 0  # the lips part both ways
    assert down > up  # the jaw does most of the opening
    measured_gap = mouth.gap + up + down
    assert measured_gap == pytest.approx(target_gap_px, rel=GAP_TOLERANCE)

    # the chin goes down with the lower lip (the jaw moves as one); the neck below stays
    chin = vertical_shift(region, warped, mouth.above_chin, mouth.cols)
    assert chin == pytest.approx(down, rel=0.1)
    assert abs(vertical_shift(region, warped, mouth.neck, mouth.cols)) <= SEARCH_STEP_PX

    # where the source had no open mouth the opening shows a drawn one, darker than the lips around it
    grey = cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY).astype(np.float32)
    c0, c1 = mouth.cols
    interior = grey[int(mouth.top - up + 0.6 * measured_gap), c0:c1].mean()  # below the upper teeth
    lower_lip = grey[int(mouth.bottom + down + 2), c0:c1].mean()
    assert interior < 0.7 * lower_lip


def test_a_wider_target_opens_wider_and_the_same_gap_changes_nothing(sample_model):
    region, pts = sample_model.region(FRAMES[0]), sample_model.region_points(FRAMES[0])
    mouth = Mouth(pts)
    drops = [vertical_shift(region, warp_lips(region, pts, target_gap_px=g, has_interior=False),
                            mouth.lower_lip, mouth.cols) for g in (10.0, 20.0, 30.0)]
    assert drops[0] < drops[1] < drops[2]
    unchanged = warp_lips(region, pts, target_gap_px=mouth.gap)
    np.testing.assert_array_equal(unchanged, region)


def test_the_corners_of_the_mouth_go_down_with_the_jaw(sample_model):
    """A wide opening reads as an "ah", not a grin: the jaw pulls the mouth's corners down too (about a
    quarter as far as the lower lip's middle: 0.3 of the drop, less the jaw's fall-off to the sides),
    with the lips still together there; the nose stays."""
    region, pts = sample_model.region(FRAMES[0]), sample_model.region_points(FRAMES[0])
    mouth = Mouth(pts)
    warped = warp_lips(region, pts, target_gap_px=30.0, has_interior=False)
    down = vertical_shift(region, warped, mouth.lower_lip, mouth.cols)
    for corner in (F.MOUTH_RIGHT_INNER, F.MOUTH_LEFT_INNER):
        x, y = (int(round(v)) for v in pts[corner])
        corner_down = vertical_shift(region, warped, (y - 5, y + 5), (x - 3, x + 4))
        assert 0.15 * down < corner_down < 0.5 * down, (corner_down, down)
    nose = (int(mouth.nose) - 6, int(mouth.nose) + 2)
    assert abs(vertical_shift(region, warped, nose, mouth.cols)) <= SEARCH_STEP_PX


@pytest.mark.parametrize("lift_px", [4.0, 10.0])
def test_a_lifted_jaw_raises_the_chin_and_leaves_nose_and_neck(sample_model, lift_px):
    """Before a less open frame's lower face is blended onto a base frame, the base's jaw is raised to
    meet it (no second chin through the blend's soft edge): the chin and lower lip move up by the
    lift, the upper lip barely, and above it and down the neck the region stays as it was."""
    region, pts = sample_model.region(FRAMES[0]), sample_model.region_points(FRAMES[0])
    mouth = Mouth(pts)
    lifted = lift_jaw(region, pts, lift_px)
    chin = -vertical_shift(region, lifted, mouth.above_chin, mouth.cols)
    assert chin == pytest.approx(lift_px, rel=0.15)
    assert -vertical_shift(region, lifted, mouth.lower_lip, mouth.cols) == pytest.approx(lift_px, rel=0.25)
    assert abs(vertical_shift(region, lifted, mouth.upper_lip, mouth.cols)) < 0.3 * lift_px
    assert abs(vertical_shift(region, lifted, mouth.neck, mouth.cols)) <= 1.0
    assert np.array_equal(lifted[: int(mouth.top) - 1], region[: int(mouth.top) - 1])
    np.testing.assert_array_equal(lift_jaw(region, pts, 0.5 * MIN_LIFT_PX), region)


def test_the_chin_is_predicted_where_the_warp_puts_it(sample_model):
    region, pts = sample_model.region(FRAMES[0]), sample_model.region_points(FRAMES[0])
    mouth = Mouth(pts)
    for gap in (12.0, 24.0):
        warped = warp_lips(region, pts, target_gap_px=gap, has_interior=False)
        moved = vertical_shift(region, warped, mouth.above_chin, mouth.cols)
        assert mouth.chin + moved == pytest.approx(chin_after_warp(pts, gap), abs=1.5)


def test_a_drawn_opening_shows_upper_teeth_lit_like_the_face(sample_model):
    """Under the upper lip of a wide drawn opening sits a band of teeth about as bright as the skin
    (not a grey smear), over a dark inside."""
    region, pts = sample_model.region(FRAMES[0]), sample_model.region_points(FRAMES[0])
    mouth, look = Mouth(pts), interior_look([region], [pts])
    gap = 36.0
    warped = warp_lips(region, pts, target_gap_px=gap, has_interior=False, look=look)
    up = -vertical_shift(region, warped, mouth.upper_lip, mouth.cols)
    grey = cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY).astype(np.float32)
    c0, c1 = mouth.cols
    top = int(round(mouth.top - up))
    rows = grey[top:top + int(gap), c0:c1].mean(axis=1)  # row by row down the opening
    teeth, inside = rows[: int(0.3 * gap)].max(), rows.min()
    assert teeth >= 0.9 * look.skin_level, (teeth, look.skin_level)
    assert inside < 0.4 * teeth


LIGHTS_BGR = ((0.8, 0.95, 1.15), (1.15, 1.0, 0.8))  # a warm and a cool light on the same face


def test_drawn_teeth_take_the_colour_of_the_light_on_the_face(sample_model):
    """Teeth lit as the face is: under a warm light they are warmer than under a cool one (not one
    fixed grey-ivory whatever the video's colours, which read as grey teeth on a warm face)."""
    region, pts = sample_model.region(FRAMES[0]), sample_model.region_points(FRAMES[0])
    mouth, gap = Mouth(pts), 36.0
    blue_over_red = []
    for light in LIGHTS_BGR:
        lit = np.clip(region * np.array(light, np.float32), 0, 255).astype(np.uint8)
        warped = warp_lips(lit, pts, target_gap_px=gap, has_interior=False, look=interior_look([lit], [pts]))
        up = -vertical_shift(lit, warped, mouth.upper_lip, mouth.cols)
        top, (c0, c1) = int(round(mouth.top - up)), mouth.cols
        band = warped[top:top + int(0.3 * gap), c0:c1].reshape(-1, 3).astype(np.float32)
        teeth = band[band.sum(axis=1) >= np.percentile(band.sum(axis=1), 90)].mean(axis=0)  # the brightest
        blue_over_red.append(teeth[0] / teeth[2])
    warm, cool = blue_over_red
    # the light's own blue/red ratio differs 2x between the two; the teeth must follow part of it
    assert cool > 1.25 * warm, (warm, cool)


@pytest.mark.parametrize("tilt_deg", [-15.0, 15.0])
def test_a_tilted_head_drops_its_jaw_along_its_own_axis(sample_model, tilt_deg):
    # the sample's region and landmarks turned in the picture, as a head tilted to one side
    own, own_pts = sample_model.region(0), sample_model.region_points(0)
    centre = (own_pts[F.MOUTH_RIGHT_INNER] + own_pts[F.MOUTH_LEFT_INNER]) / 2
    turn = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), tilt_deg, 1.0)
    size = own.shape[1::-1]
    img = cv2.warpAffine(own, turn, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    pts = own_pts @ turn[:, :2].T + turn[:, 2]
    iod = float(np.linalg.norm(pts[F.LEFT_EYE_OUTER] - pts[F.RIGHT_EYE_OUTER]))
    look = interior_look([img], [pts])

    def lean(warp) -> float:
        """Turned back to the face's own pose: how far to one side of the mouth's centre the pixels the
        warp changed lie, per pixel below it (0: the opening and the jaw drop along the face's axis)."""
        back = cv2.invertAffineTransform(turn)
        before, after = (cv2.cvtColor(cv2.warpAffine(im, back, size), cv2.COLOR_BGR2GRAY).astype(np.float32)
                         for im in (img, warp(img, pts, target_gap_px=0.3 * iod, has_interior=False, look=look)))
        ys, xs = np.nonzero(np.abs(after - before) > 25)
        assert len(xs) > 1000 and ys.mean() > centre[1]  # it opened, and below the lip line
        return float((xs.mean() - centre[0]) / (ys.mean() - centre[1]))

    assert abs(lean(warp_lips_upright)) < 0.08  # measured 0.011-0.012
    assert abs(lean(warp_lips)) > 0.15  # the plain warp drops straight down in the picture: 0.24-0.44
