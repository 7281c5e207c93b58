"""The live window: an OpenCV window showing the composited frames with a small overlay.

`cv2.imshow` without a display aborts the whole process, so `check_display` runs before any window
opens. `cv2` is imported here before anything imports `av`: PyAV's bundled libxcb otherwise makes
the first `imshow` hang.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync_cli.errors import DeviceError

WINDOW_TITLE = "lipsync live"
MAX_WINDOW_HEIGHT_PX = 900  # taller videos (portrait 1080x1920) are shown scaled down to fit a screen
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_SCALE_PER_PX = 1 / 900  # overlay text grows with the frame height
CAPTION_CHARS_PER_LINE = 42
CAPTION_MAX_LINES = 3  # the end of a long answer is the part being spoken
LATENCY_LABEL = "sound->screen"  # what the latency shown measures (see live.player), named for the user


@dataclass(frozen=True)
class Overlay:
    """What the window tells besides the avatar."""

    fps: float  # frames shown per second, measured
    latency_ms: float | None  # recent sound->screen latency (live.player); None before any frame from the service
    speech: bool  # the service detects speech in the frame shown
    status: str = ""  # a problem being handled, e.g. reconnecting; empty when all is well
    caption: str = ""  # the agent's current answer
    idle: bool = False  # the avatar's own frame: the service had no mouth for it


def check_display() -> None:
    """Raise DeviceError (one line) where no window can open; cv2.imshow would abort the process."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise DeviceError("no display ($DISPLAY is not set): run lipsync live in a desktop session, "
                          "or under a virtual one: Xvfb :99 & DISPLAY=:99 lipsync live ...")


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int]) -> None:
    thickness = max(1, round(2 * scale))
    cv2.putText(img, text, org, FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)  # outline: readable anywhere
    cv2.putText(img, text, org, FONT, scale, colour, thickness, cv2.LINE_AA)


def draw_overlay(frame: np.ndarray, overlay: Overlay) -> np.ndarray:
    """A copy of `frame` (H, W, 3) BGR with the overlay drawn on it."""
    img = frame.copy()
    h = img.shape[0]
    scale = max(0.4, h * TEXT_SCALE_PER_PX)
    line_px = int(34 * scale)
    latency = f"{overlay.latency_ms:.0f} ms" if overlay.latency_ms is not None else "-"
    _text(img, f"{overlay.fps:4.1f} fps  {LATENCY_LABEL} {latency}", (10, line_px), scale, (255, 255, 255))
    speech_colour = (0, 200, 0) if overlay.speech else (160, 160, 160)
    cv2.circle(img, (18, int(1.9 * line_px)), int(8 * scale), speech_colour, -1, cv2.LINE_AA)
    _text(img, "speech" if overlay.speech else "silence", (34, int(2.1 * line_px)), scale, speech_colour)
    if overlay.status:
        _text(img, overlay.status, (10, int(3.2 * line_px)), scale, (0, 165, 255))
    if overlay.caption:
        lines = textwrap.wrap(overlay.caption, CAPTION_CHARS_PER_LINE)[-CAPTION_MAX_LINES:]
        for k, line in enumerate(reversed(lines)):
            _text(img, line, (10, h - 12 - k * line_px), scale, (255, 255, 255))
    return img


class LiveWindow:
    """One OpenCV window. `show` returns False once the user asked to quit (q, Esc, or closing it)."""

    def __init__(self, width: int, height: int, title: str = WINDOW_TITLE):
        check_display()
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
            factor = min(1.0, MAX_WINDOW_HEIGHT_PX / height)
            cv2.resizeWindow(title, int(width * factor), int(height * factor))
        except cv2.error as exc:
            raise DeviceError(f"cannot open a window ({exc})") from exc
        self._shown = False

    def show(self, frame: np.ndarray, overlay: Overlay) -> bool:
        """Show one (H, W, 3) BGR frame with the overlay; False when the user wants to quit."""
        cv2.imshow(self.title, draw_overlay(frame, overlay))
        key = cv2.waitKey(1) & 0xFF
        closed = self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        self._shown = True
        return key not in QUIT_KEYS and not closed

    def poll(self) -> bool:
        """Handle window events between frames; False when the user wants to quit."""
        if not self._shown:
            return True
        key = cv2.waitKey(1) & 0xFF
        return key not in QUIT_KEYS and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)  # let the window system process the close
