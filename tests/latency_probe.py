"""Sound -> screen latency of `lipsync live` with the microphone, measured from outside the session.

Run as a child process in the session's sound and display setup (PulseAudio with a null sink `mic`
whose monitor is the session's microphone; an X display):

    python tests/latency_probe.py SPEC_JSON

SPEC_JSON: {"video": model video, "cache_dir": ..., "bursts": WAV of one burst (mono), "count": n,
"gap_s": silence between bursts, "lead_s": silence first}. Prints one JSON line (`ProbeResult`).

- sound: the probe plays silence, then the bursts, into the sink `mic` (PortAudio output, PULSE_SINK=mic)
  and records the sink's monitor at the same time (PortAudio input). A burst enters the microphone
  when its first non-silent sample reaches the sink: the output side tells it (`outputBufferDacTime`
  of the block that holds it), the monitor's recording tells it too (`inputBufferAdcTime`); both are
  kept, and they should agree.
- screen: the window's inner-mouth area is read back from the X server every POLL_S (XGetImage on the
  root window through ctypes); the first read after a burst's onset that differs from the last read
  before it (the mouth at rest) by more than the avatar's own motion at rest does over DRIFT_SPAN_S,
  plus CHANGE_MARGIN, marks the moment its mouth is on screen.
Every time is `time.monotonic()` of this process (the same clock as the session's).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

POLL_S = 0.002  # how often the mouth area is read back from the screen
PROBE_RATE_HZ = 44_100  # the null sink's own rate: nothing resamples the probe's sound
BLOCK = 441  # 10 ms blocks both ways
ONSET_LEVEL = 0.02  # a sample this loud starts a burst (the bursts are trimmed to start there)
MAX_WINDOW_HEIGHT_PX = 900  # as lipsync_cli.live.window scales the frame
CHANGE_MARGIN = 2.0  # a mouth differs from rest by this much (0-255 mean abs) over the rest's own worst
DRIFT_SPAN_S = 0.5  # the avatar's own motion at rest, over this long, is not a mouth opening
FIND_WINDOW_S = 20.0  # a busy machine may take this long to put the window on the screen


@dataclass(frozen=True)
class ProbeResult:
    onsets_out_s: list[float]  # each burst's first sample entering the sink, by the output side's clock
    onsets_in_s: list[float | None]  # the same, as the sink's monitor recorded it
    shown_s: list[float | None]  # the first screen read after each onset where the mouth left rest
    rest_diff: float  # the worst difference from rest while resting (the threshold's base)
    threshold: float
    trace: list[list[tuple[int, float]]]  # per burst, each read after it: (ms after the onset, change), to look at


class _XImage(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int),
                ("format", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte)), ("byte_order", ctypes.c_int),
                ("bitmap_unit", ctypes.c_int), ("bitmap_bit_order", ctypes.c_int), ("bitmap_pad", ctypes.c_int),
                ("depth", ctypes.c_int), ("bytes_per_line", ctypes.c_int), ("bits_per_pixel", ctypes.c_int)]


class Screen:
    """Reads rectangles of the X root window as (h, w, 3) BGR (24-bit TrueColor, as Xvfb's)."""

    def __init__(self):
        self.x = ctypes.cdll.LoadLibrary(ctypes.util.find_library("X11") or "libX11.so.6")
        self.x.XOpenDisplay.restype = ctypes.c_void_p
        self.x.XDefaultRootWindow.restype = ctypes.c_ulong
        self.x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        self.x.XGetImage.restype = ctypes.POINTER(_XImage)
        self.x.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
        self.x.XFree.argtypes = [ctypes.c_void_p]
        self.display = self.x.XOpenDisplay(None)
        if not self.display:
            raise RuntimeError("cannot open the X display")
        self.root = self.x.XDefaultRootWindow(self.display)

    def grab(self, left: int, top: int, width: int, height: int) -> np.ndarray:
        image = self.x.XGetImage(self.display, self.root, left, top, width, height, 0xFFFFFFFF, 2)  # ZPixmap
        if not image:
            raise RuntimeError("XGetImage failed")
        img = image.contents
        raw = np.ctypeslib.as_array(img.data, shape=(img.height * img.bytes_per_line,))
        pixels = raw.reshape(img.height, img.bytes_per_line)[:, : width * 4].reshape(height, width, 4)[:, :, :3].copy()
        self.x.XFree(ctypes.cast(img.data, ctypes.c_void_p))
        self.x.XFree(ctypes.cast(image, ctypes.c_void_p))
        return pixels


def _mouth_area(model, scale: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the inner mouth in the scaled frame: inside the mouth's bounds in every frame."""
    b = model.mouth_bounds
    x0, y0, x1, y1 = b[:, 0].max(), b[:, 1].max(), b[:, 2].min(), b[:, 3].min()
    w, h = x1 - x0, y1 - y0
    box = [int(scale * v) for v in (x0 + w / 4, y0 + h / 4, x1 - w / 4, y1 - h / 3)]
    return box[0], box[1], box[2], box[3]


def _find_window(screen: Screen, model, scale: float, timeout_s: float = FIND_WINDOW_S) -> tuple[int, int]:
    """Where the (scaled) frame's top-left is on the screen (waiting up to timeout_s for it to show)."""
    import cv2

    frame = model.frame(0) if scale == 1 else cv2.resize(model.frame(0), None, fx=scale, fy=scale)
    top = frame.shape[0] // 8
    template = frame[top: frame.shape[0] // 2]
    give_up_s = time.monotonic() + timeout_s
    while True:
        whole = screen.grab(0, 0, *_root_size(screen))
        result = cv2.matchTemplate(whole, template, cv2.TM_CCOEFF_NORMED)
        _, score, _, (x, y) = cv2.minMaxLoc(result)
        if score >= 0.6:
            return x, y - top
        if time.monotonic() > give_up_s:
            from live_support import windows_on

            raise RuntimeError(f"the avatar is not on the screen (match {score:.2f}); "
                               f"{windows_on(os.environ.get('DISPLAY', ''))}")
        time.sleep(0.2)


def _root_size(screen: Screen) -> tuple[int, int]:
    screen.x.XDisplayWidth.argtypes = screen.x.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return screen.x.XDisplayWidth(screen.display, 0), screen.x.XDisplayHeight(screen.display, 0)


class SoundIO:
    """Plays `signal` into the default sink (PULSE_SINK) and records the default source (its monitor)."""

    def __init__(self, signal: np.ndarray):
        import sounddevice as sd

        self.signal, self.position = signal, 0
        self.out_blocks: list[tuple[int, float]] = []  # (first sample, its DAC time on our clock)
        self.in_blocks: list[tuple[np.ndarray, float]] = []  # (samples, ADC time of the first, our clock)
        self.done = threading.Event()
        self.output = sd.OutputStream(samplerate=PROBE_RATE_HZ, channels=1, dtype="float32", blocksize=BLOCK,
                                      latency="low", callback=self._play)
        self.input = sd.InputStream(samplerate=PROBE_RATE_HZ, channels=1, dtype="float32", blocksize=BLOCK,
                                    latency="low", callback=self._record)

    def _play(self, outdata, frames, time_info, status) -> None:
        offset = time.monotonic() - time_info.currentTime
        self.out_blocks.append((self.position, time_info.outputBufferDacTime + offset))
        part = self.signal[self.position: self.position + frames]
        outdata[: len(part), 0] = part
        outdata[len(part):, 0] = 0
        self.position += frames
        if self.position >= len(self.signal):
            self.done.set()

    def _record(self, indata, frames, time_info, status) -> None:
        offset = time.monotonic() - time_info.currentTime
        self.in_blocks.append((indata[:, 0].copy(), time_info.inputBufferAdcTime + offset))

    def onset_out_s(self, sample: int) -> float:
        starts = [s for s, _ in self.out_blocks]
        k = int(np.searchsorted(starts, sample, side="right")) - 1
        start, dac = self.out_blocks[k]
        return dac + (sample - start) / PROBE_RATE_HZ

    def onsets_in_s(self, after_s: list[float], window_s: float) -> list[float | None]:
        """The ADC time of the first loud sample of the monitor within window_s of each time."""
        found = []
        for t in after_s:
            hit = None
            for samples, adc in self.in_blocks:
                times = adc + np.arange(len(samples)) / PROBE_RATE_HZ
                loud = np.flatnonzero((np.abs(samples) >= ONSET_LEVEL) & (times > t - window_s) & (times < t + window_s))
                if len(loud):
                    hit = float(times[loud[0]])
                    break
            found.append(hit)
        return found


def probe(spec: dict) -> ProbeResult:
    import soundfile as sf

    from lipsync_cli.media.audio import resample, to_mono
    from lipsync_cli.media.store import ModelStore

    store = ModelStore(cache_dir=Path(spec["cache_dir"]))
    model = store.get(Path(spec["video"]))
    scale = min(1.0, MAX_WINDOW_HEIGHT_PX / model.height)
    screen = Screen()
    left, top = _find_window(screen, model, scale)
    x0, y0, x1, y1 = _mouth_area(model, scale)
    burst, rate = sf.read(spec["bursts"], dtype="float32")
    burst = resample(to_mono(burst.reshape(len(burst), -1).T if burst.ndim > 1 else burst), from_rate_hz=rate,
                     to_rate_hz=PROBE_RATE_HZ) if rate != PROBE_RATE_HZ else burst
    burst = burst[int(np.flatnonzero(np.abs(burst) >= ONSET_LEVEL)[0]):]
    lead, gap = int(spec["lead_s"] * PROBE_RATE_HZ), int(spec["gap_s"] * PROBE_RATE_HZ)
    starts = [lead + k * (len(burst) + gap) for k in range(spec["count"])]
    signal = np.zeros(starts[-1] + len(burst) + gap, np.float32)
    for s in starts:
        signal[s: s + len(burst)] = burst
    sound = SoundIO(signal)
    reads: list[tuple[float, np.ndarray]] = []  # (time after the read, the mouth area)
    with sound.output, sound.input:
        while not sound.done.is_set():
            reads.append((time.monotonic(), screen.grab(left + x0, top + y0, x1 - x0, y1 - y0)[::2, ::2]
                          .astype(np.int16)))
            time.sleep(POLL_S)
    onsets_out = [sound.onset_out_s(s) for s in starts]
    times = np.array([t for t, _ in reads])
    drift = _rest_drift(reads, until_s=onsets_out[0])
    threshold = drift + CHANGE_MARGIN
    shown, trace = [], []
    for t in onsets_out:
        before = int(np.searchsorted(times, t)) - 1  # the last read before the sound: the mouth at rest
        base = reads[before][1]
        changes = [(tr, float(np.abs(area - base).mean())) for tr, area in reads[before + 1:]
                   if tr < t + spec["gap_s"]]
        trace.append([(round(1000 * (tr - t)), round(c, 2)) for tr, c in changes])
        shown.append(next((tr for tr, c in changes if c > threshold), None))
    return ProbeResult(onsets_out_s=onsets_out, onsets_in_s=sound.onsets_in_s(onsets_out, 0.2), shown_s=shown,
                       rest_diff=drift, threshold=threshold, trace=trace)


def _rest_drift(reads: list[tuple[float, np.ndarray]], *, until_s: float) -> float:
    """The largest change of the mouth area at rest over DRIFT_SPAN_S (the avatar's own motion)."""
    rest = [(t, a) for t, a in reads if t < until_s]
    worst = 0.0
    for i, (t, a) in enumerate(rest):
        for u, b in rest[i + 1:]:
            if u - t > DRIFT_SPAN_S:
                break
            worst = max(worst, float(np.abs(b - a).mean()))
    return worst


if __name__ == "__main__":
    print(json.dumps(asdict(probe(json.loads(sys.argv[1])))), flush=True)
