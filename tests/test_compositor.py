"""The compositor against a simple reference: cropping a region and pasting it back changes nothing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync_cli.media.cache import crop_region
from lipsync_cli.core.compositor import CHANGE_LEVEL, change_mask, composite, composite_i420
from lipsync_cli.media.yuv import CHROMA_TO_VIDEO, LUMA_TO_VIDEO, decode_jpeg_into, i420_frame, plane_views
from lipsync_cli.rpc.client import decode_image
from lipsync_cli.core.region import feather_mask


def _frame(h=600, w=800):
    rng = np.random.default_rng(1)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)


@pytest.mark.parametrize("bounds", [(100.3, 80.7, 330.2, 310.6), (40.5, 20.25, 560.0, 540.0), (700.0, 500.0, 900.0, 700.0)])
def test_crop_then_paste_is_the_identity(bounds):
    frame = _frame()
    region = crop_region(frame, np.array(bounds))
    pasted = frame.copy()
    assert composite(pasted, region, bounds)
    diff = np.abs(pasted.astype(int) - frame.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 12


def test_no_visible_box_only_a_feathered_change():
    frame = _frame()
    bounds = (200.0, 150.0, 520.0, 470.0)
    region = np.full((320, 320, 3), 255, np.uint8)  # a region that differs everywhere
    out = frame.copy()
    composite(out, region, bounds)
    change = np.abs(out.astype(int) - frame.astype(int)).mean(axis=2)
    assert change[310, 360] > 40  # the centre takes the region
    # along the region's border the change fades to (almost) nothing: no hard rectangle
    assert change[150, 200:520].max() < 3 and change[150:470, 200].max() < 3
    assert change[:140].max() == 0 and change[:, :195].max() == 0
    mask = feather_mask(320)
    assert mask[0].max() == 0 and mask[160, 160] == 1
    assert not mask.flags.writeable  # one cached array serves every caller: nobody may change it


def test_invalid_images_and_bounds_leave_the_frame_untouched():
    frame = _frame()
    assert decode_image(b"") is None and decode_image(b"not a jpeg") is None
    ok, rect = cv2.imencode(".jpg", np.zeros((100, 50, 3), np.uint8))
    assert decode_image(rect.tobytes()) is None  # not square
    region = np.zeros((320, 320, 3), np.uint8)
    for bad in [(np.nan, 0, 10, 10), (10, 10, 5, 5), (900, 700, 1000, 800), (0, 0, 1, 1), (1, 2, 3)]:
        out = frame.copy()
        assert not composite(out, region, bad)
        assert (out == frame).all()


def test_only_what_the_generator_changed_is_pasted():
    frame = _frame()
    bounds = (150.0, 100.0, 550.0, 500.0)  # 400 px shown from a 320 px region: resampling would blur it
    reference = crop_region(frame, np.array(bounds))
    region = reference.copy()
    cv2.ellipse(region, (160, 200), (50, 20), 0, 0, 360, (20, 20, 60), -1)  # a drawn open mouth
    out = frame.copy()
    composite(out, region, bounds, reference=reference)
    change = np.abs(out.astype(int) - frame.astype(int)).mean(axis=2)
    mouth_y, mouth_x = 100 + int(200 * 400 / 320), 150 + int(160 * 400 / 320)
    assert change[mouth_y, mouth_x] > 40  # the mouth is there
    # skin the generator left alone keeps the frame's own pixels exactly, resampling never touches it
    assert change[110:160, 160:540].max() == 0 and change[440:490, 160:540].max() == 0
    # without a reference the whole region is pasted (and so resampled)
    plain = frame.copy()
    composite(plain, region, bounds)
    assert np.abs(plain.astype(int) - frame.astype(int))[130:150, 300:400].max() > 0


@pytest.mark.parametrize("bounds", [(150.0, 100.0, 550.0, 500.0), (-60.5, 300.25, 260.0, 620.0)])
def test_pasting_only_the_touched_pixels_is_pasting_the_whole_region(bounds):
    """Only the frame pixels under the changed part of the region are worked on; the picture is
    the one a paste of the whole region gives (up to the warp's 1/32-pixel rounding)."""
    from lipsync_cli.core.compositor import _paste, paste_weight

    frame = _frame()
    reference = crop_region(frame, np.array(bounds))
    region = reference.copy()
    cv2.ellipse(region, (160, 200), (50, 20), 0, 0, 360, (20, 20, 60), -1)
    touched = frame.copy()
    assert composite(touched, region, bounds, reference=reference)
    whole = frame.copy()
    x0, y0, x1, y1 = bounds
    covered = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
               min(800, int(np.ceil(x1))), min(600, int(np.ceil(y1))))
    _paste(whole, region, paste_weight(region, reference), bounds, covered)
    diff = np.abs(touched.astype(int) - whole.astype(int))
    assert diff.max() <= 3 and (diff > 1).sum() < 50, (diff.max(), (diff > 1).sum())
    assert np.abs(touched.astype(int) - frame.astype(int)).max() > 40  # the mouth is there


def test_crop_region_shrinks_without_aliasing():
    stripes = np.zeros((600, 600, 3), np.uint8)
    stripes[::2] = 255  # one-pixel lines: any point sampling shows them as bands
    face = crop_region(stripes, np.array([0.0, 0.0, 600.0, 600.0]), 96)
    assert face.shape == (96, 96, 3) and abs(float(face.mean()) - 127.5) < 3 and face.std() < 10


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_a_change_in_any_one_colour_channel_counts(channel):
    """The change mask takes the largest of the three channel differences per pixel."""
    reference = np.full((320, 320, 3), 120, np.uint8)
    region = reference.copy()
    region[140:180, 140:180, channel] += CHANGE_LEVEL + 1
    mask = change_mask(region, reference)
    assert mask.shape == (320, 320) and mask.dtype == np.float32
    assert mask[160, 160] > 0.99 and mask[5, 5] == 0
    region[140:180, 140:180, channel] = 120 + CHANGE_LEVEL  # at the level itself: JPEG noise, unchanged
    assert change_mask(region, reference).max() == 0


def _i420_of(bgr):
    import av

    return av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")


@pytest.mark.parametrize("bounds", [(100.3, 81.7, 331.2, 310.6), (-30.5, -20.25, 250.0, 260.0),
                                    (640.0, 450.0, 811.0, 621.0)])
def test_the_yuv_paste_is_the_bgr_paste(bounds):
    """The render pastes onto the encoder's yuv420p frame, converting only the mouth's box: the same
    picture as pasting in BGR and converting the whole frame, and nothing changes outside the box."""
    frame, bounds = _frame(), np.array(bounds)
    # a sharp red-and-white pattern: each chroma sample must be the mean of its 2x2 pixels, as the
    # encoder's own conversion makes it (one of the four would fringe the lips with colour)
    region = np.where((np.indices((320, 320)).sum(axis=0) % 2 == 0)[..., None],
                      np.array((40, 60, 200), np.uint8), np.array((250, 250, 250), np.uint8))
    bgr = frame.copy()
    assert composite(bgr, region, bounds)
    yuv = _i420_of(frame)
    before = yuv.to_ndarray().copy()
    assert composite_i420(plane_views(yuv), region, bounds)
    diff = np.abs(yuv.to_ndarray().astype(int) - _i420_of(bgr).to_ndarray().astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 6, (diff.mean(), diff.max())
    x0, y0 = max(0, int(np.floor(bounds[0]))) // 2 * 2, max(0, int(np.floor(bounds[1]))) // 2 * 2
    x1, y1 = int(np.ceil(bounds[2])) + 2, int(np.ceil(bounds[3])) + 2
    outside = np.ones(before[:600].shape, bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(yuv.to_ndarray()[:600][outside], before[:600][outside])


def test_full_range_levels_map_to_video_range_as_rounded():
    """The scale-and-offset mapping of JPEG levels to the encoder's rounds every level to nearest."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    luma = cv2.convertScaleAbs(levels, None, *LUMA_TO_VIDEO).ravel()
    chroma = cv2.convertScaleAbs(levels, None, *CHROMA_TO_VIDEO).ravel()
    assert np.array_equal(luma, np.round(16 + np.arange(256) * 219 / 255).astype(np.uint8))
    assert np.array_equal(chroma, np.round(128 + (np.arange(256) - 128) * 224 / 255).astype(np.uint8))
    assert (luma[0], luma[255], chroma[0], chroma[128], chroma[255]) == (16, 235, 16, 128, 240)


def test_unusable_bounds_leave_the_yuv_frame_untouched():
    yuv = _i420_of(_frame())
    before = yuv.to_ndarray().copy()
    region = np.full((320, 320, 3), 255, np.uint8)
    for bounds in ((-50.0, -50.0, -10.0, -10.0), (10.0, 10.0, np.nan, 200.0), (900.0, 10.0, 1000.0, 200.0)):
        assert not composite_i420(plane_views(yuv), region, bounds)
    assert np.array_equal(yuv.to_ndarray(), before)


def test_a_jpeg_decodes_into_the_encoders_frame_at_video_range():
    """A cache frame (4:2:0 JPEG, full-range levels) decoded into yuv420p planes reads as the same
    picture as decoding it to BGR; a JPEG of another size is refused and the planes stay as they were."""
    frame = _frame()
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
    yuv, planes = i420_frame(800, 600)
    assert decode_jpeg_into(jpeg, planes)
    expected = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    diff = np.abs(yuv.to_ndarray(format="bgr24").astype(int) - expected.astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99.9) <= 8, (diff.mean(), diff.max())
    other, other_planes = i420_frame(640, 480)
    other_planes[0][:] = 7
    assert not decode_jpeg_into(jpeg, other_planes)
    assert not decode_jpeg_into(b"not a jpeg", other_planes)
    assert (other_planes[0] == 7).all()
