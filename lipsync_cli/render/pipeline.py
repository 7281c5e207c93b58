"""`render`: speech in, a finished lip-synced MP4 out.

WAV -> samples -> gRPC service (`core.engine` behind it) -> `MouthFrame`s (mouth regions + bounds)
-> compositor onto the model's own frames -> PyAV encoder. The service is always reached over
gRPC: either one the user runs (`server`) or one started in-process on a free loopback port for
this render (`rpc.embedded`).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


from lipsync_cli.core.compositor import composite, composite_i420
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.generators import make_generator
from lipsync_cli.core.phones import start_recogniser
from lipsync_cli.core.timing import first_sample_of_frame, frame_count
from lipsync_cli.defaults import OPENCV_THREADS
from lipsync_cli.errors import AudioError, ServiceError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, aac_rate_for, load_audio, resample
from lipsync_cli.media.store import Model, ModelStore
from lipsync_cli.media.yuv import i420_frame
from lipsync_cli.media.video import DEFAULT_CRF, DEFAULT_PRESET, Mp4Writer, check_output_path
from lipsync_cli.progress import ProgressFn, report
from lipsync_cli.rpc.client import LipSyncClient
from lipsync_cli.rpc.embedded import embedded_service


COMPOSE_AHEAD_FRAMES = 4  # frames decoded and composited ahead of the encoder
# frames decoded and composited at once: the full-frame JPEG decode is the largest cost per frame
# after the encoder's, and one worker alone leaves a core idle whenever the encoder waits for it
COMPOSE_WORKERS = 2


@dataclass(frozen=True)
class RenderOptions:
    model: str | None = None  # a model name or video path; None: the only model found, else the sample
    server: str | None = None  # host:port (or list, or dns:///) of a running service; None: embedded
    preset: str = DEFAULT_PRESET  # libx264 preset
    crf: int = DEFAULT_CRF  # libx264 quality (lower is better, 18-23 is visually clean)
    generator: str = "own"  # the embedded service's generator ("own" or "onnx")
    onnx_path: Path | None = None  # the network for generator="onnx"


@dataclass(frozen=True)
class RenderSummary:
    output: Path
    model: str
    frames: int
    duration_s: float
    seconds: float  # wall time of the render, prepare excluded
    fallbacks: int  # frames shown untouched because their mouth image was missing or invalid
    speech_frames: int
    width: int
    height: int

    @property
    def speed_x(self) -> float:
        """Render speed as a multiple of real time."""
        return self.duration_s / self.seconds if self.seconds > 0 else float("inf")


@contextlib.contextmanager
def _service_target(options: RenderOptions, store: ModelStore):
    if options.server:
        yield options.server
        return
    generator = make_generator(options.generator, onnx_path=options.onnx_path)
    with embedded_service(store, generator) as target:
        yield target


def _compose(model: Model, mouth: MouthFrame) -> tuple[np.ndarray, bool]:
    """The full model frame `mouth` is drawn on, with its mouth pasted; untouched (False) when the
    mouth image is missing or its bounds are unusable."""
    index = mouth.model_frame % model.n_frames
    frame = model.frame(index)
    if mouth.image is None:
        return frame, False
    return frame, composite(frame, mouth.image, mouth.bounds, reference=model.region(index))


def _compose_for(writer: Mp4Writer, model: Model, mouth: MouthFrame) -> tuple[object, bool]:
    """`_compose` as a frame for `writer`'s encoder. The model frame is decoded straight into the
    encoder's yuv420p frame and only the mouth's box is converted to BGR and back (`media.yuv`);
    an odd-sized model, or a frame whose JPEG will not decode that way, goes through BGR instead."""
    index = mouth.model_frame % model.n_frames
    if (writer.width, writer.height) == (model.width, model.height):
        frame, planes = i420_frame(writer.width, writer.height)
        if model.frame_into(index, planes):
            if mouth.image is None:
                return frame, False
            return frame, composite_i420(planes, mouth.image, mouth.bounds, reference=model.region(index))
    bgr, pasted = _compose(model, mouth)
    return writer.encoder_frame(bgr), pasted


def _composed(model: Model, mouths: Iterator[MouthFrame],
              writer: Mp4Writer) -> Iterator[tuple[MouthFrame, object, bool]]:
    """(mouth, composited frame ready for `writer`, pasted) in order. Decoding, pasting and the
    colour conversion run a few frames ahead of the encoder in worker threads (OpenCV and swscale
    release the GIL), so they overlap with each other and with encoding on the main thread."""
    with ThreadPoolExecutor(max_workers=COMPOSE_WORKERS, thread_name_prefix="lipsync-compose") as pool:
        pending: deque = deque()
        for mouth in mouths:
            pending.append((mouth, pool.submit(_compose_for, writer, model, mouth)))
            if len(pending) >= COMPOSE_AHEAD_FRAMES:
                mouth_done, job = pending.popleft()
                yield (mouth_done, *job.result())
        while pending:
            mouth_done, job = pending.popleft()
            yield (mouth_done, *job.result())


def render(audio_path: Path, output: Path, *, options: RenderOptions, store: ModelStore,
           progress: ProgressFn | None = None) -> RenderSummary:
    """Render `audio_path` spoken by the model into the MP4 `output` (atomically)."""
    progress = report(progress)
    output = Path(output)
    check_output_path(output, inputs=(Path(audio_path), store.video_for(options.model)))
    if not options.server:
        start_recogniser()  # the phones' own process starts while the audio and the model load
    cv2.setNumThreads(OPENCV_THREADS)
    clip = load_audio(audio_path)
    model, name = store.open(options.model)
    if len(clip.samples) < first_sample_of_frame(1, fps=model.fps, sample_rate_hz=SAMPLE_RATE_HZ):
        raise AudioError(f"{audio_path}: the audio is shorter than one video frame ({1 / float(model.fps):.3f} s)")
    n_frames = frame_count(len(clip.samples), fps=model.fps, sample_rate_hz=SAMPLE_RATE_HZ)
    t0 = time.perf_counter()
    fallbacks = speech = written = 0
    orig_rate = aac_rate_for(clip.original_rate_hz)
    original = resample(clip.original, from_rate_hz=clip.original_rate_hz, to_rate_hz=orig_rate)
    with _service_target(options, store) as target:
        client = LipSyncClient(target)
        try:
            frames = client.render_clip(name, clip.samples[:, None], SAMPLE_RATE_HZ)
            with Mp4Writer(output, fps=model.fps, width=model.width, height=model.height,
                           audio_rate_hz=orig_rate, audio_channels=original.shape[1],
                           preset=options.preset, crf=options.crf) as writer:
                for mouth, frame, pasted in _composed(model, frames, writer):
                    if mouth.index != written:
                        raise ServiceError(f"the service sent frame {mouth.index} where {written} was due")
                    fallbacks += not pasted
                    speech += mouth.speech
                    writer.write_frame(frame)
                    # the audio that plays during this frame, in the file's own rate
                    a0 = first_sample_of_frame(written, fps=model.fps, sample_rate_hz=orig_rate)
                    a1 = first_sample_of_frame(written + 1, fps=model.fps, sample_rate_hz=orig_rate)
                    writer.write_audio(original[a0:a1])
                    written += 1
                    progress("rendering", written, n_frames)
                if written != n_frames:
                    raise ServiceError(f"the service sent {written} frames where {n_frames} were due")
                tail = first_sample_of_frame(written, fps=model.fps, sample_rate_hz=orig_rate)
                writer.write_audio(original[tail:])
                width, height = writer.width, writer.height
        finally:
            client.close()
    return RenderSummary(output=output, model=model.name, frames=written,
                         duration_s=len(clip.samples) / SAMPLE_RATE_HZ, seconds=time.perf_counter() - t0,
                         fallbacks=fallbacks, speech_frames=speech, width=width, height=height)
