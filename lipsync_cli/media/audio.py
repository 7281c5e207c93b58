"""Audio in: files of any rate, channel count and sample type, to one internal format.

Analysis runs on mono float32 at `SAMPLE_RATE_HZ`. The original samples are kept too, so a rendered
MP4 carries the speech at its own quality, not the analysis copy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from lipsync_cli.errors import AudioError
from lipsync_cli.media.files import check_input_file

SAMPLE_RATE_HZ = 16_000  # the one internal analysis rate
# the rates a file may claim; outside them the header is damaged (1 Hz would make millions of samples)
MIN_FILE_RATE_HZ = 4_000
MAX_FILE_RATE_HZ = 768_000
PCM16_FULL_SCALE = 32767
AAC_RATES_HZ = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
AAC_FALLBACK_RATE_HZ = 48000  # for any other rate: the usual rate of video sound tracks


@dataclass(frozen=True)
class AudioClip:
    """A decoded audio file."""

    samples: np.ndarray  # (n,) float32 mono at SAMPLE_RATE_HZ, for analysis
    original: np.ndarray  # (m, channels) float32 in [-1, 1] at original_rate_hz, for the output file
    original_rate_hz: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


def aac_rate_for(rate_hz: int) -> int:
    """The rate an MP4's AAC track should use for audio at `rate_hz` (itself when AAC allows it)."""
    return rate_hz if rate_hz in AAC_RATES_HZ else AAC_FALLBACK_RATE_HZ


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) float -> (n,) float32 mono (mean of the channels)."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, *, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Resample (n,) or (n, channels) float32 with a polyphase anti-aliasing filter (scipy's resample_poly)."""
    if from_rate_hz == to_rate_hz:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(from_rate_hz, to_rate_hz)
    return resample_poly(samples, to_rate_hz // g, from_rate_hz // g, axis=0).astype(np.float32)


class StreamResampler:
    """Resamples a stream chunk by chunk to `to_rate_hz`; the output does not depend on the chunking.

    FFmpeg's swresample through PyAV (its filter state carries across chunks, so the output is the
    same, to the bit, however the input is cut). It holds back only its filter's reach, about 1 ms
    of output, until more input or `flush` comes: every millisecond held back is a millisecond of
    live latency (libsoxr's high-quality stream, used until stop 26, held back 22 ms on average and
    up to 40 ms at 44.1 kHz in 10 ms chunks). After `flush`, the output has as many samples as
    `resample` gives for the whole input, and matches it up to the filters' differences (no delay
    between the two).
    """

    def __init__(self, *, from_rate_hz: int, to_rate_hz: int = SAMPLE_RATE_HZ):
        self.from_rate_hz, self.to_rate_hz = from_rate_hz, to_rate_hz
        self.resampler = self.av = None
        if from_rate_hz != to_rate_hz:
            import av

            self.av = av  # imported once, here: push runs every 10 ms of a live stream
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate_hz)
        self.n_in = 0  # input samples received
        self.n_out = 0  # output samples produced

    def _run(self, frame) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """(n,) float32 at from_rate_hz -> (m,) float32 at to_rate_hz, everything that can be computed yet."""
        if self.resampler is None:
            return samples.astype(np.float32, copy=False)
        if len(samples) == 0:
            return np.zeros(0, dtype=np.float32)
        frame = self.av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None, :],
                                           format="flt", layout="mono")
        frame.sample_rate = self.from_rate_hz
        out = self._run(frame)
        self.n_in += len(samples)
        self.n_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """End of input: the output samples still held back."""
        if self.resampler is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._run(None) if self.n_in else np.zeros(0, dtype=np.float32)
        # the resamplers may round the output length differently: pad with the silence past the end (or
        # cut) so a stream and its whole clip give the same number of samples (and of video frames)
        total = -(-self.n_in * self.to_rate_hz // self.from_rate_hz)
        tail = tail[:max(0, total - self.n_out)]
        tail = np.concatenate([tail, np.zeros(max(0, total - self.n_out - len(tail)), dtype=np.float32)])
        self.n_out += len(tail)
        return tail


def pcm_to_float(data: bytes, *, sample_type: str, channels: int) -> np.ndarray:
    """Interleaved PCM bytes -> (n, channels) float32. sample_type: 's16' or 'f32' (little-endian)."""
    if sample_type == "s16":
        width, dtype, scale = 2, "<i2", 1 / 32768.0
    elif sample_type == "f32":
        width, dtype, scale = 4, "<f4", 1.0
    else:
        raise AudioError(f"unknown sample type {sample_type!r}: use s16 or f32")
    frame_bytes = width * channels
    if len(data) % frame_bytes:
        raise AudioError(f"{len(data)} bytes is not a whole number of {channels}-channel {sample_type} samples")
    arr = np.frombuffer(data, dtype=dtype).astype(np.float32) * np.float32(scale)
    return arr.reshape(-1, channels)


def float_to_pcm16(samples: np.ndarray, channels: int | None = None) -> tuple[bytes, int]:
    """(n,) or (n, channels) float in [-1, 1] -> interleaved PCM16 little-endian bytes and the channel count."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or (channels is not None and samples.shape[1] != channels):
        want = f"(n, {channels})" if channels is not None else "(n,) or (n, channels)"
        raise AudioError(f"audio of shape {samples.shape} does not fit: expected {want}")
    check_samples(samples, what="the audio")
    pcm = np.round(np.clip(samples, -1.0, 1.0) * PCM16_FULL_SCALE).astype("<i2")
    return pcm.tobytes(), samples.shape[1]


def check_samples(samples: np.ndarray, *, what: str) -> None:
    """Refuse audio that holds NaN or infinite values (it would poison every later stage)."""
    if samples.size and not np.isfinite(samples).all():
        raise AudioError(f"{what} holds NaN or infinite samples: export it again as plain PCM")


def _wav_truncation(path: Path) -> tuple[int, int] | None:
    """For a RIFF/WAVE file, (declared data bytes, present data bytes) if the data chunk is cut short."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                start = f.tell()
                present = path.stat().st_size - start
                # 0 and 0xFFFFFFFF mean "unknown length" (a WAV written to a pipe)
                if size not in (0, 0xFFFFFFFF) and present < size:
                    return size, present
                return None
            f.seek(size + (size & 1), 1)


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int] | None:
    """The first audio stream of any file FFmpeg (PyAV) reads, as ((n, channels) float32, rate); None if
    FFmpeg cannot read it. AudioError for a picture or video without a sound track."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                if container.streams.video:
                    raise AudioError(f"{path}: the file is a picture or video with no sound track; give the "
                                     "speech as WAV, FLAC, OGG, MP3 or M4A")
                return None
            stream = container.streams.audio[0]
            if stream.codec_context is None:  # FFmpeg found no codec settings: nothing to decode
                return None
            resampler = av.AudioResampler(format="flt", layout="stereo" if stream.channels > 1 else "mono")
            blocks = [f.to_ndarray().reshape(-1, min(stream.channels, 2))
                      for frame in container.decode(stream) for f in resampler.resample(frame)]
            rate = stream.rate
            # AAC pads its last frame with silence (up to 1024 samples); an MP4/M4A says where the sound ends
            # (other containers only estimate their length: an MP3 without a header, from its first bit rate)
            exact = "mp4" in container.format.name.split(",")
            declared = int(round(stream.duration * stream.time_base * rate)) if exact and stream.duration and rate else 0
    except (av.FFmpegError, OSError, ValueError):
        return None
    if not blocks or not rate:
        return None
    data = np.concatenate(blocks).astype(np.float32)
    return (data[:declared] if 0 < declared < len(data) else data), int(rate)


def load_audio(path: str | Path) -> AudioClip:
    """Read an audio file: what soundfile reads (WAV of any PCM/float type, FLAC, OGG, MP3), else
    the first audio stream FFmpeg finds (M4A/AAC, the sound track of a video).

    Raises AudioError with one line saying what is wrong for a missing, empty, truncated,
    non-audio or NaN-filled file.
    """
    import soundfile as sf

    path = Path(path)
    check_input_file(path, error=AudioError, kind="audio")
    cut = _wav_truncation(path)
    if cut is not None:
        raise AudioError(
            f"{path}: the WAV file is truncated (its header announces {cut[0]} bytes of samples, "
            f"it holds {cut[1]}): export or copy it again"
        )
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except MemoryError as exc:  # a damaged header announcing more samples than exist
        raise AudioError(f"{path}: the file announces more samples than fit in memory; it is damaged") from exc
    except (RuntimeError, sf.LibsndfileError) as exc:  # LibsndfileError is a RuntimeError
        # not a format libsndfile reads (m4a/AAC, the sound of a video, ...): FFmpeg may
        decoded = _decode_with_ffmpeg(path)
        if decoded is None:
            raise AudioError(f"{path}: not a readable audio file ({exc}); use WAV, FLAC, OGG, MP3 or M4A") from exc
        data, rate = decoded
    return clip_from_samples(data, int(rate), what=str(path))


def clip_from_samples(data: np.ndarray, rate_hz: int, *, what: str) -> AudioClip:
    """Decoded (n, channels) float32 samples at rate_hz -> an AudioClip; refuses empty or NaN audio."""
    if data.shape[0] == 0:
        raise AudioError(f"{what}: the file holds no audio samples")
    if not MIN_FILE_RATE_HZ <= rate_hz <= MAX_FILE_RATE_HZ:
        raise AudioError(f"{what}: a sample rate of {rate_hz} Hz is not plausible audio "
                         f"(use {MIN_FILE_RATE_HZ} to {MAX_FILE_RATE_HZ} Hz); the file may be damaged")
    check_samples(data, what=what)
    mono = resample(to_mono(data), from_rate_hz=rate_hz, to_rate_hz=SAMPLE_RATE_HZ)
    # huge finite samples (a damaged float file) can overflow in the downmix or the filter
    check_samples(mono, what=what)
    return AudioClip(samples=mono, original=data, original_rate_hz=rate_hz)
