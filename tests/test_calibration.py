"""The neutral avatar's full opening, measured once: as wide as the face still reads as opening wider."""

from __future__ import annotations

import numpy as np

from lipsync_cli.core import calibration as C
from lipsync_cli.core.mouth import DEFAULT_MAX_OPEN, OwnMouthGenerator


def test_the_full_opening_puts_wide_vowels_where_the_face_reads_widest(sample_model):
    profile = OwnMouthGenerator().profile(sample_model)
    assert not profile.talking
    assert C.MIN_SHARE_OF_DEFAULT * DEFAULT_MAX_OPEN <= profile.max_open <= DEFAULT_MAX_OPEN
    resting = int(profile.candidates[np.argmin(np.abs(profile.open[profile.candidates] - profile.rest_open))])
    again = C.readable_max_open(sample_model, resting, profile.region_pts[resting], profile.look,
                                rest_open=profile.rest_open, default=DEFAULT_MAX_OPEN)
    assert again == profile.max_open  # measured, not guessed: the same face gives the same opening
    # a default that allows wider still does not go past where the reading peaks
    wider = C.readable_max_open(sample_model, resting, profile.region_pts[resting], profile.look,
                                rest_open=profile.rest_open, default=0.7)
    assert wider < 0.7 and wider >= profile.max_open
    peak_gap = profile.rest_open + C.TYPICAL_P95_SHARE * (wider - profile.rest_open)
    assert min(abs(peak_gap - g) for g in C.GRID_GAPS) < 1e-9  # lands on the grid gap that read widest


def test_a_still_that_smiles_with_its_teeth_is_opened_as_a_neutral_face_is(store, smiler_video):
    model = store.get(smiler_video)
    profile = OwnMouthGenerator().profile(model)
    assert np.percentile(model.mouth_open, 5) > 0.05  # the premise: lips apart in every frame
    # its mouth never moves: not a talking video, whose own narrow range of openings would be reused
    assert not profile.talking
    assert profile.max_open >= C.MIN_SHARE_OF_DEFAULT * DEFAULT_MAX_OPEN
    assert profile.max_open - profile.rest_open >= 0.15  # it was 0.08 (a talking video's least range)
