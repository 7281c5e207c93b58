"""Video in and out through PyAV: decode any stream FFmpeg reads, write H.264 + AAC MP4.

Output files are written to a temporary file beside the target and renamed into place only when
complete, so an interrupted write never leaves a broken file under the user's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2  # noqa: F401  (cv2 before av: PyAV's bundled libxcb otherwise hangs cv2.imshow)
import numpy as np

from lipsync_cli.errors import OutputError, VideoError
# aac_rate_for: a temporary re-export until render/pipeline.py, live/audio_io.py and live/live.py
# import it from media.audio
from lipsync_cli.media.audio import AAC_RATES_HZ
from lipsync_cli.media.files import check_input_file, finish, temporary_beside

AAC_FRAME_SAMPLES = 1024  # the AAC encoder takes audio frames of exactly this many samples
# FFmpeg's AAC coder: "fast" costs a third of the default "twoloop" search (0.2 s instead of 0.6 s of
# CPU for 15 s of stereo speech, 1 ms per video frame of a render) and at 128-160 kb/s speech sounds
# the same
AAC_CODER = "fast"
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 20
# what the frames written are (BT.601 matrix, video range: swscale's conversion from BGR and
# media/yuv.py), tagged in the file: untagged, players take an HD picture for BT.709 and shift its
# colours (a skin tone's red by about 5 levels)
BT601_COLORSPACE = 6  # FFmpeg's AVCOL_SPC_SMPTE170M
VIDEO_COLOR_RANGE = 1  # FFmpeg's AVCOL_RANGE_MPEG


@dataclass(frozen=True)
class VideoInfo:
    fps: Fraction
    width: int
    height: int
    n_frames: int  # as the container declares it; 0 when unknown
    duration_s: float
    variable_rate: bool = False  # its frames come unevenly (a phone in poor light): read at `fps`, made even


# a variable frame rate: the longest of the usual gaps between frames (90th percentile) this many
# times the shortest (10th); a steady video's timestamps jitter by a few percent at most
VARIABLE_RATE_SPREAD = 1.4
VARIABLE_RATE_SCAN_PACKETS = 300  # packets whose timestamps are read to tell (12 s at 25 fps: a probe stays quick)
COMMON_RATES = tuple(Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "48", "50",
                                           "60000/1001", "60"))


def _open(path: Path):
    import av

    check_input_file(path, error=VideoError, kind="video")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable video file ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream")
    if container.streams.video[0].codec_context is None:
        container.close()
        raise VideoError(f"{path}: the video stream's codec is unknown (the file may be damaged)")
    return container


def _upright(frame) -> np.ndarray:
    """A decoded frame as (H, W, 3) BGR the way players show it (phone videos carry a rotation)."""
    img = frame.to_ndarray(format="bgr24")
    quarter_turns = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4  # counter-clockwise
    return np.ascontiguousarray(np.rot90(img, quarter_turns)) if quarter_turns else img


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, size (as shown, rotation applied), frame count and duration of a video file."""
    import av

    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        fps = Fraction(rate).limit_denominator(1001)
        if fps <= 0:  # a damaged header can claim a rate that rounds to nothing
            fps = Fraction(25)
        duration_s = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / 1e6 if container.duration else 0.0)
        duration_s = max(0.0, duration_s)
        width, height = stream.codec_context.width, stream.codec_context.height
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: the video stream cannot be decoded ({exc})") from exc
        if first is not None:
            height, width = _upright(first).shape[:2]
        steady_fps = _variable_rate_fps(container, stream)  # from the packets after the first frame's
        if steady_fps is not None:
            return VideoInfo(fps=steady_fps, width=width, height=height, duration_s=duration_s,
                             n_frames=int(round(duration_s * steady_fps)), variable_rate=True)
        return VideoInfo(fps=fps, width=width, height=height, n_frames=int(stream.frames or 0), duration_s=duration_s)


def _variable_rate_fps(container, stream) -> Fraction | None:
    """For a video whose frames come unevenly, the steady rate to read it at (that of its closely
    spaced frames, so no frame is lost: the sparse stretches repeat theirs); None for a steady one."""
    import av

    times = []
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size:
                times.append(float(packet.pts * stream.time_base))
            if len(times) >= VARIABLE_RATE_SCAN_PACKETS:
                break
    except av.FFmpegError:
        return None
    gaps = np.diff(np.sort(np.array(times)))
    gaps = gaps[gaps > 0]
    if len(gaps) < 4:
        return None
    short, long_ = np.percentile(gaps, [10, 90])
    if long_ <= VARIABLE_RATE_SPREAD * short:
        return None
    rate = 1 / float(np.median(gaps[gaps <= 1.2 * short]))
    nearest = min(COMMON_RATES, key=lambda r: abs(float(r) - rate))
    return nearest if abs(float(nearest) - rate) <= 0.03 * rate else Fraction(round(rate))


def iter_frames(path: str | Path, info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """Decode every frame of the first video stream as (H, W, 3) uint8 BGR, upright as players show it.

    A video of variable frame rate comes at the steady rate `probe_video` gives it: each slot of
    that rate shows the frame nearest its time (the sparse stretches repeat frames). info: the
    video's `probe_video`, when the caller has it already.
    """
    import av

    path = Path(path)
    info = info or probe_video(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            frames = container.decode(stream)
            if info.variable_rate:
                yield from _at_steady_rate(frames, info.fps)
            else:
                for frame in frames:
                    yield _upright(frame)
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: the video stream is damaged ({exc})") from exc


def _at_steady_rate(frames, fps: Fraction) -> Iterator[np.ndarray]:
    """Decoded frames with their times -> upright frames at `fps`: each slot shows the frame nearest
    its time (slots up to midway to the next frame; the last frame's up to half a slot past it)."""
    step_s = 1 / float(fps)
    timed = (frame for frame in frames if frame.time is not None)  # no timestamp: nothing to place it by
    held = next(timed, None)
    start_s, slot = (held.time if held is not None else 0.0), 0
    while held is not None:
        following = next(timed, None)
        until_s = held.time + step_s / 2 if following is None else (held.time + following.time) / 2
        img, shown = None, 0
        while start_s + slot * step_s < until_s:
            img = _upright(held) if img is None else img
            yield img if shown == 0 else img.copy()
            shown, slot = shown + 1, slot + 1
        held = following


def _audio_layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov")


def check_output_path(path: Path, *, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, with one line, an output path an MP4 cannot be written to (before any work is done),
    or one that is one of the `inputs` (the speech, the model video): it would be replaced."""
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name ending in .mp4")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"{path}: the output must be an .mp4 file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: the folder {parent} does not exist")
    for source in inputs:
        if path.exists() and Path(source).exists() and path.samefile(source):
            raise OutputError(f"{path}: is an input of this render and would be replaced; name another output")


class Mp4Writer:
    """Write BGR frames and float audio to an H.264 (yuv420p) + AAC MP4, moov atom first.

    Use as a context manager: on an exception the temporary file is removed and `path` is left
    untouched; on success the finished file is renamed to `path`.
    """

    def __init__(self, path: str | Path, *, fps: Fraction, width: int, height: int,
                 audio_rate_hz: int | None = None, audio_channels: int = 1,
                 preset: str = DEFAULT_PRESET, crf: int = DEFAULT_CRF):
        import av

        self.path = Path(path)
        check_output_path(self.path)
        fd, self._tmp = temporary_beside(self.path, error=OutputError, suffix=".part.mp4")
        os.close(fd)  # PyAV opens the file by name
        self.fps = Fraction(fps)
        # H.264 in yuv420p needs even dimensions
        self.width, self.height = width - width % 2, height - height % 2
        try:
            self._container = av.open(str(self._tmp), "w", format="mp4", options={"movflags": "+faststart"})
            vs = self._container.add_stream("libx264", rate=self.fps)
            vs.width, vs.height, vs.pix_fmt = self.width, self.height, "yuv420p"
            vs.codec_context.colorspace, vs.codec_context.color_range = BT601_COLORSPACE, VIDEO_COLOR_RANGE
            vs.options = {"preset": preset, "crf": str(crf)}
            vs.thread_type = "AUTO"
            self._video = vs
            self._audio = None
            if audio_rate_hz:
                self.audio_channels = min(max(audio_channels, 1), 2)
                if audio_rate_hz not in AAC_RATES_HZ:
                    raise ValueError(f"AAC cannot carry {audio_rate_hz} Hz: resample with aac_rate_for() first")
                self.audio_rate_hz = audio_rate_hz
                aus = self._container.add_stream("aac", rate=self.audio_rate_hz)
                aus.layout = _audio_layout(self.audio_channels)
                aus.options = {"b": "160k" if self.audio_channels == 2 else "128k", "aac_coder": AAC_CODER}
                self._audio = aus
                self._pending = np.zeros((0, self.audio_channels), np.float32)
                self._audio_pts = 0
        except Exception:
            self._tmp.unlink(missing_ok=True)
            raise
        self.frames_written = 0
        self._closed = False

    def encoder_frame(self, bgr: np.ndarray):
        """One (H, W, 3) uint8 BGR frame as the encoder's own yuv420p `av.VideoFrame` (cropped to even
        size if needed). It is the same swscale conversion `write_frame` would make, so a caller can
        run it in a worker thread (it releases the GIL) while the encoder works on earlier frames."""
        import av

        if bgr.shape[0] != self.height or bgr.shape[1] != self.width:
            bgr = bgr[: self.height, : self.width]
        # wrapped, not copied (a 1080x1920 copy costs about a third of the conversion itself); the
        # conversion makes a frame of its own, so `bgr` may be reused once this returns
        source = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(bgr), format="bgr24")
        return source.reformat(format="yuv420p")

    def write_frame(self, frame) -> None:
        """Append one frame: (H, W, 3) uint8 BGR (cropped to even size if needed), or an
        `av.VideoFrame` of the writer's size (one from `encoder_frame` needs no further conversion)."""
        if isinstance(frame, np.ndarray):
            frame = self.encoder_frame(frame)
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps
        self._mux(self._video.encode(frame))
        self.frames_written += 1

    def write_audio(self, samples: np.ndarray) -> None:
        """Append (n, channels) or (n,) float32 audio at the rate given to the constructor."""
        if self._audio is None or len(samples) == 0:
            return
        a = samples.reshape(len(samples), -1).astype(np.float32, copy=False)
        if a.shape[1] != self.audio_channels:  # mono -> stereo or many -> stereo/mono
            a = np.repeat(a.mean(axis=1, keepdims=True), self.audio_channels, axis=1)
        self._pending = np.concatenate([self._pending, np.clip(a, -1.0, 1.0)])
        self._encode_audio(final=False)

    def _encode_audio(self, *, final: bool) -> None:
        import av

        n_full = len(self._pending) // AAC_FRAME_SAMPLES * AAC_FRAME_SAMPLES
        if final:  # the encoder takes a shorter last frame, so the track ends with the sound, not 1024 samples on
            n_full = len(self._pending)
        for start in range(0, n_full, AAC_FRAME_SAMPLES):
            block = self._pending[start:start + AAC_FRAME_SAMPLES]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.T), format="fltp",
                                               layout=_audio_layout(self.audio_channels))
            frame.sample_rate = self.audio_rate_hz
            frame.pts = self._audio_pts
            frame.time_base = Fraction(1, self.audio_rate_hz)
            self._audio_pts += len(block)
            self._mux(self._audio.encode(frame))
        self._pending = self._pending[n_full:]

    def _mux(self, packets) -> None:
        import av

        try:
            self._container.mux(packets)
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"{self.path}: writing failed ({exc})") from exc

    def close(self) -> None:
        """Flush the encoders, finish the file and move it to its final name."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mux(self._video.encode(None))
            if self._audio is not None:
                self._encode_audio(final=True)
                self._mux(self._audio.encode(None))
            self._container.close()
            finish(self._tmp, self.path)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Drop the partial file; `path` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # the file is being thrown away; a failing close changes nothing
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
