"""Live audio through PortAudio (sounddevice): the microphone, a file played as if it were one, the
speakers, and the list of devices.

Audio callbacks only move data: each one hands a block to (or takes one from) a bounded queue with
`put_nowait`/`get_nowait`, never waits and never does I/O. When the microphone's queue overruns, the
callback only counts it; the reading side reports it, with what to change. The speakers play
silence when their queue runs dry, and a full queue drops the block.

Every block is mono float32 in [-1, 1]; `captured_at_s` is `time.monotonic()` when a block's last
sample was captured (or, for a file, when it would have been). Every source of a live session (the
microphone, a file played as one, the agent's answers) is an `AudioSource`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lipsync_cli.errors import DeviceError
from lipsync_cli.media.audio import aac_rate_for

log = logging.getLogger(__name__)

CHUNK_MS = 20  # one audio block: short enough for low latency, long enough for Python's scheduling
MIC_BLOCK_MS = 10  # the microphone's block: each ms of it waits in the capture buffer before anything sees it
# the lip-sync engine's own rate: a microphone opened at it needs no resampler (which holds ~1 ms back)
MIC_PREFERRED_RATE_HZ = 16_000
QUEUE_BLOCKS = 100  # a queue holds 1 s of microphone blocks (2 s of CHUNK_MS ones) before it overruns
SPEAKER_QUEUE_BLOCKS = 12  # at most 240 ms of sound waits for the speakers (barge-in stops it at once)
LATE_TICKS_RESYNC = 5  # a paced source this many blocks behind (the machine stalled) restarts its clock
READ_TIMEOUT_S = 0.1  # how long a read waits: threads that read look at their stop flag this often

MessageFn = Callable[[str], None]
NO_SAMPLES = np.zeros(0, np.float32)


class AudioSource(Protocol):
    """Mono float32 audio in [-1, 1], released in real time, a block (CHUNK_MS, the microphone's MIC_BLOCK_MS)
    at a time."""

    rate_hz: int  # the rate of every block
    overruns: int  # blocks lost because nobody read them in time (a microphone's only)

    def read(self, timeout_s: float) -> tuple[np.ndarray, float] | None:
        """The next (n,) block and when its last sample was captured; None when none came within timeout_s."""

    def read_ahead(self, max_samples: int) -> np.ndarray:
        """Up to max_samples that will play after everything read (or read ahead) so far; empty when
        the future is unknown (a microphone)."""

    def close(self) -> None:
        """Stop capturing; reading after this is undefined."""


class AnswerSource(AudioSource, Protocol):
    """An agent's spoken answers: queued as they arrive, released as they play, cut on barge-in."""

    def add(self, samples: np.ndarray, item_id: str) -> None:
        """Queue (n,) float32 samples of conversation item `item_id` after everything queued."""

    def interrupt(self) -> tuple[str | None, int]:
        """Drop the answer: (the item being played, samples of it read so far), or (None, 0)."""


def _sounddevice():
    """The sounddevice module; DeviceError when PortAudio itself is missing."""
    try:
        import sounddevice
    except OSError as exc:  # raised at import when libportaudio2 is not installed
        raise DeviceError(f"PortAudio is not available ({exc}): install it (apt-get install libportaudio2)") from exc
    return sounddevice


def chunk_samples(rate_hz: int) -> int:
    """Samples in one CHUNK_MS block at rate_hz."""
    return rate_hz * CHUNK_MS // 1000


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    host_api: str
    inputs: int  # input channels
    outputs: int  # output channels
    default_rate_hz: int
    is_default_input: bool
    is_default_output: bool


def list_devices() -> list[DeviceInfo]:
    """Every audio device PortAudio sees (empty on a machine without any)."""
    sd = _sounddevice()
    try:
        devices, apis = sd.query_devices(), sd.query_hostapis()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list the audio devices ({exc})") from exc
    return [DeviceInfo(index=i, name=d["name"], host_api=apis[d["hostapi"]]["name"],
                       inputs=d["max_input_channels"], outputs=d["max_output_channels"],
                       default_rate_hz=int(d["default_samplerate"]),
                       is_default_input=i == default_in, is_default_output=i == default_out)
            for i, d in enumerate(devices)]


def _input_device(device: int | str | None) -> DeviceInfo:
    """The microphone to open: `device` (an index or part of a name) or the default input."""
    inputs = [d for d in list_devices() if d.inputs > 0]
    if not inputs:
        raise DeviceError("no microphone found: plug one in, or play a file as the microphone with --input FILE.wav")
    if device is None:
        return next((d for d in inputs if d.is_default_input), inputs[0])
    if isinstance(device, int) or str(device).isdigit():
        found = [d for d in inputs if d.index == int(device)]
    else:
        found = [d for d in inputs if str(device).lower() in d.name.lower()]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise DeviceError(f"{what} input device matches {device!r}: see --list-devices")
    return found[0]


def _mic_rate_hz(sd, info: DeviceInfo) -> int:
    """MIC_PREFERRED_RATE_HZ where the device takes it, else its own default rate (one an MP4 can carry)."""
    try:
        sd.check_input_settings(device=info.index, samplerate=MIC_PREFERRED_RATE_HZ, channels=1, dtype="float32")
        return MIC_PREFERRED_RATE_HZ
    except (sd.PortAudioError, ValueError):
        return aac_rate_for(info.default_rate_hz)


class MicSource:
    """The microphone: blocks of MIC_BLOCK_MS, mono, at MIC_PREFERRED_RATE_HZ where the device allows, else
    at its own rate (one an MP4 can carry), with the lowest capture latency the device offers."""

    def __init__(self, device: int | str | None = None):
        sd = _sounddevice()
        info = _input_device(device)
        self.name = info.name
        self.rate_hz = _mic_rate_hz(sd, info)
        self.overruns = 0  # blocks the reader did not take in time (dropped)
        self._blocks: queue.Queue = queue.Queue(maxsize=QUEUE_BLOCKS)
        try:
            self._stream = sd.InputStream(device=info.index, samplerate=self.rate_hz, channels=1, dtype="float32",
                                          blocksize=self.rate_hz * MIC_BLOCK_MS // 1000, latency="low",
                                          callback=self._callback)
        except sd.PortAudioError as exc:
            raise DeviceError(f"cannot open the microphone {info.name!r} at {self.rate_hz} Hz ({exc}): "
                              "pick another with --device (see --list-devices)") from exc

    def _callback(self, indata, frames, time_info, status) -> None:
        now_s = time.monotonic()
        # when the block's last sample entered the microphone: PortAudio's ADC time of its first, on our
        # clock (PortAudio's own is another); 0 where the host API does not tell: now, the latest it can be
        waited_s = time_info.currentTime - time_info.inputBufferAdcTime if time_info.inputBufferAdcTime else 0.0
        captured_s = now_s - max(0.0, waited_s) + (frames - 1) / self.rate_hz if waited_s else now_s
        try:
            self._blocks.put_nowait((indata[:, 0].copy(), min(now_s, captured_s)))
        except queue.Full:
            self.overruns += 1

    def read(self, timeout_s: float) -> tuple[np.ndarray, float] | None:
        """The next captured block and its capture time, or None when none came within timeout_s.

        The first call starts the capture, so nothing piles up while the session is being set up.
        """
        if not self._stream.active:
            try:
                self._stream.start()
            except _sounddevice().PortAudioError as exc:
                raise DeviceError(f"the microphone {self.name!r} does not start ({exc})") from exc
        try:
            return self._blocks.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def read_ahead(self, max_samples: int) -> np.ndarray:
        return NO_SAMPLES  # a microphone cannot know what comes next

    def close(self) -> None:
        self._stream.close()


class Ticker:
    """A real-time clock for paced sources: `wait()` returns at each block boundary, without drift."""

    def __init__(self, block_s: float):
        self.block_s = block_s
        self._next: float | None = None  # the first wait starts the clock


    def wait(self, timeout_s: float) -> float | None:
        """Sleep until the next boundary and return its time; None if it is more than timeout_s away."""
        now = time.monotonic()
        if self._next is None:
            self._next = now + self.block_s
        if self._next - now > timeout_s:
            time.sleep(timeout_s)
            return None
        if now - self._next > LATE_TICKS_RESYNC * self.block_s:
            self._next = now  # the machine stalled: carry on from now rather than rushing to catch up
        time.sleep(max(0.0, self._next - now))
        tick, self._next = self._next, self._next + self.block_s
        return tick


class PacedFile:
    """Audio played as if it came from a microphone: CHUNK_MS blocks released in real time, then silence.

    samples: (n,) float32 mono at rate_hz.
    """

    def __init__(self, samples: np.ndarray, rate_hz: int):
        self.samples, self.rate_hz = samples, rate_hz
        self.overruns = 0  # never: the file waits for its reader
        self.position = 0  # samples released so far (past the end: silence)
        self._ticker = Ticker(chunk_samples(rate_hz) / rate_hz)

    def read(self, timeout_s: float) -> tuple[np.ndarray, float] | None:
        """The next block when its time has come, or None when it is more than timeout_s away."""
        tick = self._ticker.wait(timeout_s)
        if tick is None:
            return None
        n = chunk_samples(self.rate_hz)
        block = np.zeros(n, np.float32)
        part = self.samples[self.position:self.position + n]
        block[:len(part)] = part
        self.position += n
        return block, tick

    def read_ahead(self, max_samples: int) -> np.ndarray:
        return NO_SAMPLES  # played as a microphone: its future is not told

    def close(self) -> None:
        pass


def _open_output(rate_hz: int, block_samples: int, callback):
    """A started output stream on the default device; DeviceError when there is none or it refuses."""
    sd = _sounddevice()
    if not any(d.outputs > 0 for d in list_devices()):
        raise DeviceError("no audio output device found")
    try:
        stream = sd.OutputStream(samplerate=rate_hz, channels=1, dtype="float32", blocksize=block_samples,
                                 callback=callback)
        stream.start()
    except sd.PortAudioError as exc:
        raise DeviceError(f"the output device refuses {rate_hz} Hz mono ({exc})") from exc
    return stream


class Speaker:
    """The default output device, fed CHUNK_MS blocks through a bounded queue.

    With no usable output device it says so once through `on_message` and plays nothing; everything
    else carries on. `delay_ms` of silence is queued first (and again after a flush), so the sound
    waits for the picture; without a device the sound it would have played is as late.
    """

    def __init__(self, rate_hz: int, *, on_message: MessageFn, delay_ms: int = 0):
        self.rate_hz = rate_hz
        self.latency_s = 0.0  # what the device adds after our queue
        self._delay_blocks = min(SPEAKER_QUEUE_BLOCKS // 2, delay_ms // CHUNK_MS)
        self._blocks: queue.Queue = queue.Queue(maxsize=SPEAKER_QUEUE_BLOCKS)
        self._queue_delay()
        self._stream = None
        try:
            self._stream = _open_output(rate_hz, chunk_samples(rate_hz), self._callback)
            self.latency_s = float(self._stream.latency)
        except DeviceError as exc:
            on_message(f"no sound output ({exc}): carrying on without sound")

    def _queue_delay(self) -> None:
        for _ in range(self._delay_blocks):
            self._blocks.put_nowait(np.zeros(chunk_samples(self.rate_hz), np.float32))

    @property
    def delay_s(self) -> float:
        """How long a block queued now waits before it is heard (no device: the delay it would have had)."""
        if self._stream is None:
            return self._delay_blocks * CHUNK_MS / 1000
        return self._blocks.qsize() * CHUNK_MS / 1000 + self.latency_s

    def _callback(self, outdata, frames, time_info, status) -> None:
        try:
            block = self._blocks.get_nowait()
        except queue.Empty:
            outdata.fill(0)
            return
        m = min(frames, len(block))
        outdata[:m, 0] = block[:m]
        outdata[m:, 0] = 0

    def play(self, block: np.ndarray) -> None:
        """Queue one block (never waits; a full queue drops it)."""
        if self._stream is not None:
            with contextlib.suppress(queue.Full):
                self._blocks.put_nowait(block)

    def flush(self) -> int:
        """Drop everything queued and not yet played; returns how many samples were dropped. The delay's
        silence is queued again: what plays next still waits for its picture."""
        dropped = 0
        while True:
            try:
                dropped += len(self._blocks.get_nowait())
            except queue.Empty:
                break
        if self._stream is not None:
            with contextlib.suppress(queue.Full):
                self._queue_delay()
        return dropped

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
