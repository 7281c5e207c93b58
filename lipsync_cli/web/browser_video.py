"""An H.264 copy of a model video for browsers that cannot decode the original (HEVC, say).

Debian's Chromium decodes H.264, VP8, VP9 and AV1 but not HEVC; a phone records HEVC. The page
extracts model frames with a `<video>`, so a model in another codec is offered as an H.264 copy,
transcoded once on the server into the cache folder (atomically: a half-written copy is never
served) and served at its own URL; the original URL keeps serving the original file unchanged.

The copy's file name carries a hash of the source's absolute path, size and mtime, so a replaced
source gets a new copy and never a stale one. Frames are decoded upright (rotation applied, as
the server's model sees them), so bounds the bridge sends fit the copy's frames too.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import av

from lipsync_cli.errors import VideoError
from lipsync_cli.media.cache import default_cache_dir
from lipsync_cli.media.models import model_name
from lipsync_cli.media.video import Mp4Writer, VideoInfo, iter_frames, probe_video

# the codecs Chromium's <video> decodes without proprietary extras (Debian's build: no HEVC)
BROWSER_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})
COPY_SUFFIX = ".browser.mp4"
# a model video is seen on a phone-sized canvas: a visually lossless copy, quicker than `render`'s
COPY_CRF = 18

_locks_guard = threading.Lock()
_locks: dict[Path, threading.Lock] = {}  # one transcode per copy at a time, however many pages ask


def video_codec(video: Path) -> str:
    """The codec name of the first video stream (FFmpeg's: "h264", "hevc", ...)."""
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise VideoError(f"{video}: the file has no video stream")
            return container.streams.video[0].codec_context.name
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{video}: not a readable video file ({exc})") from exc


def needs_browser_copy(video: Path, info: VideoInfo | None = None) -> bool:
    """True when a browser cannot be expected to decode `video` as it is, or would decode other frames
    than the server's (a variable frame rate, which the server reads at a steady one). info: the
    video's `probe_video`, when the caller has it already."""
    return video_codec(video) not in BROWSER_CODECS or (info or probe_video(video)).variable_rate


def browser_copy_path(video: Path, cache_dir: Path | None) -> Path:
    """Where the H.264 copy of `video` lives (whether or not it has been made)."""
    st = video.stat()
    key = f"{video.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{model_name(video)}-{hashlib.sha1(key).hexdigest()[:10]}{COPY_SUFFIX}"


def ensure_browser_copy(video: Path, cache_dir: Path | None) -> Path:
    """The H.264 copy of `video`, transcoded now if it is not there yet (seconds: call off the event loop).

    Raises VideoError when the source cannot be decoded, OutputError when the copy cannot be written.
    """
    path = browser_copy_path(video, cache_dir)
    with _locks_guard:
        lock = _locks.setdefault(path, threading.Lock())
    with lock:
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        info = probe_video(video)
        # Mp4Writer writes a temporary file and renames it when complete
        with Mp4Writer(path, fps=info.fps, width=info.width, height=info.height, crf=COPY_CRF) as writer:
            for frame in iter_frames(video, info):
                writer.write_frame(frame)
    return path
