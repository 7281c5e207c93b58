"""How the made mouth looks on a neutral avatar (samples/avatar.mp4 never opens its mouth): the
inside of the mouth is one consistent thing from frame to frame, and the chin drops with the opening.
"""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_cli.core.driver import MouthParams
from lipsync_cli.core.mouth import LIPS_MEET_OPEN, SPEECH_FLOOR_RAMP, OwnMouthGenerator
from lipsync_cli.core.warp import warp_lips
from lipsync_cli.media import face as F
from test_warp import Mouth, vertical_shift

FRAME = 60  # a frame in the middle of the sample's breathing sway
INTERIOR_MAX_MEAN_DIFF = 10.0  # grey levels: two near-equal openings show near-identical insides
INTERIOR_MIN_DARKENING = 40.0  # ...and that inside is a dark mouth, not the lips the model shows there


def speaking(open_: float) -> MouthParams:
    return MouthParams(open_, 0.0, 0.0, False, True, "C")


def interior_box(pts: np.ndarray, gap_px: float) -> tuple[slice, slice]:
    """Rows and columns well inside an opening of `gap_px` below the inner upper lip of `pts`, away
    from the lips' edges (the centre half of the width, the middle of the gap's height)."""
    m = Mouth(pts)
    xl, xr = pts[F.MOUTH_RIGHT_INNER, 0], pts[F.MOUTH_LEFT_INNER, 0]
    cx, hw = (xl + xr) / 2, (xr - xl) / 2
    return (slice(int(m.top + 0.25 * gap_px), int(m.top + 0.75 * gap_px)),
            slice(int(cx - 0.5 * hw), int(cx + 0.5 * hw)))


def test_the_inside_of_two_neighbouring_frames_with_nearly_equal_openings_is_nearly_identical(sample_model):
    stream = OwnMouthGenerator().open_stream(sample_model)
    first = stream.render(model_frame=FRAME, params=speaking(0.50)).image
    second = stream.render(model_frame=FRAME + 1, params=speaking(0.52)).image
    pts = sample_model.region_points(FRAME)
    iod_px = float(np.linalg.norm(pts[F.LEFT_EYE_OUTER] - pts[F.RIGHT_EYE_OUTER]))
    gap_px = stream.target_open(speaking(0.50)) * iod_px
    rows, cols = interior_box(pts, gap_px)
    a = first[rows, cols].astype(np.float32)
    b = second[rows, cols].astype(np.float32)
    assert a.size > 0
    assert np.abs(a - b).mean() < INTERIOR_MAX_MEAN_DIFF
    # what is compared is the drawn inside of an open mouth (darker than the model's closed lips there)
    model_own = sample_model.region(FRAME)[rows, cols].astype(np.float32)
    assert model_own.mean() - a.mean() > INTERIOR_MIN_DARKENING


def test_the_drawn_inside_is_the_same_whichever_frame_it_is_drawn_on(sample_model):
    """The colours come from the person (measured once), not from the frame: the same opening on two
    far-apart frames gives the same inside (up to the frames' own small motion)."""
    gen = OwnMouthGenerator()
    look = gen.profile(sample_model).look
    insides = []
    for frame in (10, 150):
        region, pts = sample_model.region(frame), sample_model.region_points(frame)
        warped = warp_lips(region, pts, target_gap_px=20.0, has_interior=False, look=look)
        rows, cols = interior_box(pts, 20.0)
        insides.append(warped[rows, cols].astype(np.float32).mean(axis=(0, 1)))
    np.testing.assert_allclose(insides[0], insides[1], atol=6.0)


@pytest.mark.parametrize("open_", [0.3, 0.45])  # wider drops the jaw past the test's 30 px search
def test_the_chin_and_jawline_drop_with_the_opening(sample_model, open_):
    stream = OwnMouthGenerator().open_stream(sample_model)
    region = stream.render(model_frame=FRAME, params=speaking(0.0)).image  # lips at rest (open 0 in speech)
    opened = stream.render(model_frame=FRAME, params=speaking(open_)).image
    pts = sample_model.region_points(FRAME)
    m = Mouth(pts)
    lower_lip = vertical_shift(region, opened, m.lower_lip, m.cols)
    chin = vertical_shift(region, opened, m.above_chin, m.cols)
    assert lower_lip > 2.0
    assert chin == pytest.approx(lower_lip, rel=0.2)  # the jaw moves as one: the chin as far as the lip
    # the jawline halfway out to the jaw's angle follows too, less than the chin (the jaw turns about the ears)
    side_x = int((pts[F.CHIN, 0] + pts[172, 0]) / 2)
    jaw_y = int(np.interp(side_x, *zip(*sorted((pts[i, 0], pts[i, 1]) for i in (172, 136, 150, 149, 176, 148, 152)))))
    side = vertical_shift(region, opened, (jaw_y - 12, jaw_y + 2), (side_x - 6, side_x + 6))
    assert 0.2 * chin < side < chin + 1.0


def test_pbm_closures_and_a_near_zero_opening_render_shut_and_vowels_open(sample_model):
    """The lips stay a little apart through speech, but not where the driver closes them: a P/B/M
    closure and a near-zero `open` (lips meeting) have the lips together as at rest (the base frame's
    own resting mouth where it rests: the same mouth as in silence), and an open vowel is well open."""
    stream = OwnMouthGenerator().open_stream(sample_model)
    p = stream.p
    span = p.max_open - p.rest_open
    pressed = MouthParams(0.0, 0.0, 0.0, True, True, "A")
    assert stream.target_open(pressed) == stream.target_open(speaking(0.01)) == p.rest_open
    resting = int(np.argmin(p.open))
    assert stream.target_open(pressed, resting) == pytest.approx(p.open[resting])
    assert stream.target_open(speaking(0.0)) == pytest.approx(p.rest_open)
    assert stream.target_open(speaking(0.02)) < p.rest_open + 0.05 * span
    assert stream.target_open(speaking(0.15)) >= p.rest_open + 0.15 * span  # mid-speech: apart
    assert stream.target_open(speaking(0.7)) > p.rest_open + 0.6 * span
    # and the rendered region of a closure is the model's own closed mouth
    closed = stream.render(model_frame=FRAME, params=pressed).image.astype(np.float32)
    own = sample_model.region(FRAME).astype(np.float32)
    assert np.abs(closed - own).mean() < 4.0


def test_the_wanted_gap_rises_smoothly_and_monotonically_with_open(sample_model):
    """The wanted gap is a smooth, rising function of the driver's `open`: past the speech floor's
    ramp its slope varies little, so any jump the tracker reads in a render is not made here."""
    stream = OwnMouthGenerator().open_stream(sample_model)
    opens = np.linspace(0.0, 1.0, 201)
    gaps = np.array([stream.target_open(speaking(float(o))) for o in opens])
    steps = np.diff(gaps)
    rising = opens[1:] > LIPS_MEET_OPEN  # below it the lips are together, as at rest
    assert (steps[rising] > 0).all() and (steps[~rising] >= 0).all()
    past_floor = opens[1:] > 2 * SPEECH_FLOOR_RAMP  # below the ramp the lips part quickly from rest
    assert steps[past_floor].max() < 1.5 * steps[past_floor].min()


TEETH_MIN_WIDTH_SHARE = 0.5  # a wide opening shows upper teeth across this share of the inner-lip width
# (0.60 now; 0.41 with the drawn mouth of stop 23)
TEETH_MIN_CONTRAST = 60.0  # grey levels between a column's teeth and the dark inside below them
SEAM_MIN_DIP = 8.0  # grey levels: a seam between two teeth is this much darker than the teeth beside it
SEAM_SIDE_PX = 4  # ...looking this far either side
MIN_SEAMS = 3  # a wide opening shows at least four separate teeth (the middle line and a seam each side)


def _upper_teeth(model, open_: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A drawn opening of `open_` on FRAME: per column of the inner-lip width, the brightest grey level
    where upper teeth hang and the darkest of the opening below them; and the width's two ends."""
    stream = OwnMouthGenerator().open_stream(model)
    wide = speaking(open_)
    opened = stream.render(model_frame=FRAME, params=wide).image.mean(axis=2)
    pts = model.region_points(FRAME)
    iod_px = float(np.linalg.norm(pts[F.LEFT_EYE_OUTER] - pts[F.RIGHT_EYE_OUTER]))
    gap_px = stream.target_open(wide) * iod_px
    top = int(Mouth(pts).top)
    xl, xr = float(pts[F.MOUTH_RIGHT_INNER, 0]), float(pts[F.MOUTH_LEFT_INNER, 0])
    cols = slice(int(xl), int(np.ceil(xr)))
    teeth = opened[top:top + int(0.3 * gap_px), cols].max(axis=0)
    inside = opened[top:top + int(gap_px), cols].min(axis=0)
    return teeth, inside, xl, xr


def test_a_wide_opening_shows_a_row_of_upper_teeth_across_the_mouth(sample_model):
    """A person's wide vowel is a wide oval with the upper teeth showing across it, not a tall dark
    bowl with a small grey patch in the middle (the drawn mouth until stop 24)."""
    teeth, inside, xl, xr = _upper_teeth(sample_model, 0.75)  # a wide vowel
    shown = np.r_[False, teeth - inside > TEETH_MIN_CONTRAST, False]
    # the run of columns with teeth through the middle of the mouth
    centre = len(shown) // 2
    assert shown[centre]
    left = centre - np.flatnonzero(~shown[:centre][::-1])[0]
    right = centre + np.flatnonzero(~shown[centre:])[0]
    assert (right - left) / (xr - xl) >= TEETH_MIN_WIDTH_SHARE


def test_the_upper_teeth_are_separate_teeth(sample_model):
    """The row of upper teeth shows where one tooth meets the next (a faint darker seam), as a
    person's teeth do, not one smooth band (the drawn mouth until stop 25)."""
    teeth, inside, _, _ = _upper_teeth(sample_model, 0.75)
    lit = teeth - inside > TEETH_MIN_CONTRAST
    seams = [x for x in range(SEAM_SIDE_PX, len(teeth) - SEAM_SIDE_PX)
             if lit[x - SEAM_SIDE_PX:x + SEAM_SIDE_PX + 1].all() and teeth[x] == teeth[x - 1:x + 2].min()
             and teeth[x] <= min(teeth[x - SEAM_SIDE_PX:x].max(), teeth[x + 1:x + SEAM_SIDE_PX + 1].max()) - SEAM_MIN_DIP]
    assert len(seams) >= MIN_SEAMS, (seams, np.round(teeth))
