"""Frames as the H.264 encoder takes them: yuv420p (I420), video-range BT.601 levels.

A render's model frames are JPEGs in the cache. Decoded straight into the encoder's own frame
(the JPEG's 4:2:0 planes, full-range levels mapped to video range) they skip two
full-frame colour conversions, JPEG -> BGR and BGR -> yuv420p: at 1080x1920, 6.4 ms of CPU per
frame instead of 10. Only the mouth's box is converted to BGR to be composited, and back, by
swscale as the encoder's own conversion of a whole BGR frame would be.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]

# JPEG (JFIF) stores BT.601 at full range (0-255); H.264's yuv420p, as swscale writes it from BGR,
# uses video range: luma 16-235, chroma 16-240 around 128. As (scale, offset) of `cv2.convertScaleAbs`,
# which rounds each of the 256 levels as a lookup table of round(offset + scale * level) would, at a
# quarter of cv2.LUT's cost on a plane with row padding (1080x1920: 0.5 ms against 1.9 for the luma)
LUMA_TO_VIDEO = (219 / 255, 16.0)
CHROMA_TO_VIDEO = (224 / 255, 128 - 128 * 224 / 255)
_local = threading.local()  # one MJPEG decoder per thread (a codec context is not thread-safe)


def i420_frame(width: int, height: int):
    """A new, blank yuv420p `av.VideoFrame` (even width and height) and writable views of its planes."""
    import av

    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs an even frame size, not {width}x{height}")
    frame = av.VideoFrame(width, height, "yuv420p")
    return frame, plane_views(frame)


def plane_views(frame) -> Planes:
    """(h, w) uint8 views of a yuv420p `av.VideoFrame`'s Y, U and V planes (writes reach the frame)."""
    w, h = frame.width, frame.height
    sizes = ((w, h), (w // 2, h // 2), (w // 2, h // 2))
    return tuple(np.frombuffer(p, np.uint8).reshape(ph, p.line_size)[:, :pw]
                 for p, (pw, ph) in zip(frame.planes, sizes))


def _decoder():
    import av

    if getattr(_local, "mjpeg", None) is None:
        _local.mjpeg = av.CodecContext.create("mjpeg", "r")
        _local.mjpeg.thread_count = 1
    return _local.mjpeg


def decode_jpeg_into(jpeg: bytes | np.ndarray, planes: Planes) -> bool:
    """Decode a 4:2:0 colour JPEG of the planes' size into them, at video range. False (the planes
    untouched) when the JPEG is of another size or layout (the caller decodes it another way)."""
    import av

    try:
        decoded = _decoder().decode(av.Packet(bytes(jpeg)))
    except (av.FFmpegError, ValueError):
        _local.mjpeg = None  # a decoder that failed may keep a broken state
        return False
    if len(decoded) != 1:
        return False
    src = decoded[0]
    height, width = planes[0].shape
    if src.format.name not in ("yuvj420p", "yuv420p") or (src.width, src.height) != (width, height):
        return False
    for k, (source, target) in enumerate(zip(plane_views(src), planes)):
        if source.shape != target.shape:
            return False
        scale, offset = LUMA_TO_VIDEO if k == 0 else CHROMA_TO_VIDEO
        cv2.convertScaleAbs(source, target, scale, offset)
    return True


def crop_to_bgr(planes: Planes, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The box [x0, x1) x [y0, y1) of I420 planes (even corners) as (h, w, 3) BGR."""
    import av

    y, u, v = planes
    h, w = y1 - y0, x1 - x0
    packed = np.concatenate([y[y0:y1, x0:x1].ravel(), u[y0 // 2:y1 // 2, x0 // 2:x1 // 2].ravel(),
                             v[y0 // 2:y1 // 2, x0 // 2:x1 // 2].ravel()]).reshape(h * 3 // 2, w)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p").to_ndarray(format="bgr24")


def bgr_to_crop(bgr: np.ndarray, planes: Planes, x0: int, y0: int) -> None:
    """Write (h, w, 3) BGR (even h and w) back into the box of I420 planes whose corner is (x0, y0)."""
    import av

    h, w = bgr.shape[:2]
    # swscale, as the encoder's own conversion of a whole BGR frame: each chroma sample is the mean of
    # its 2x2 pixels (OpenCV's BGR -> I420 takes one of the four: colour fringes along the lips)
    converted = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24").reformat(format="yuv420p")
    for plane, source, (py, px) in zip(planes, plane_views(converted), ((y0, x0), (y0 // 2, x0 // 2), (y0 // 2, x0 // 2))):
        plane[py:py + source.shape[0], px:px + source.shape[1]] = source
