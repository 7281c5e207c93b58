"""Where model videos live, and how a model name or path becomes a video file.

A model is a video of the avatar. Names are looked up, in order, in the user's `--models-dir` and
then the original system's places, relative to the working directory. Paths are taken as they
are. Remote callers (HTTP, gRPC) may only use names: `find_named_model` refuses anything that
could leave the model folders.
"""

from __future__ import annotations

import re
from pathlib import Path

from lipsync_cli.errors import ModelNotFoundError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
# the original system's places, relative to the working directory
DEFAULT_MODEL_DIRS = ("model_videos", "realtime_lipsync/model_videos", "datasets_test")
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
SAMPLE_MODEL = SAMPLES_DIR / "avatar.mp4"  # the bundled sample avatar, used when nothing else exists
MAX_NAME_LENGTH = 128
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def search_dirs(models_dir: Path | None = None) -> list[Path]:
    """The folders searched for model names, in order."""
    dirs = [Path(models_dir)] if models_dir is not None else []
    return dirs + [Path.cwd() / d for d in DEFAULT_MODEL_DIRS]


def model_name(video: Path) -> str:
    """The model name of a video: its file name without the suffix."""
    return Path(video).stem


def is_valid_name(name: str) -> bool:
    """True for a plain model name: letters, digits, `_ . -`, no path parts, not too long."""
    return 0 < len(name) <= MAX_NAME_LENGTH and bool(_NAME_RE.match(name)) and ".." not in name


def find_named_model(name: str, *, models_dir: Path | None = None) -> Path:
    """Find the video of a model by name only (safe for names that come from the network).

    A name may carry its suffix (`alice.mp4`) or not (`alice`). Raises ModelNotFoundError naming
    the places searched.
    """
    dirs = search_dirs(models_dir)
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in VIDEO_SUFFIXES else name
    if is_valid_name(name):
        for d in dirs:
            for suffix in VIDEO_SUFFIXES:
                candidate = d / f"{stem}{suffix}"
                if candidate.is_file():
                    return candidate
    if name == model_name(SAMPLE_MODEL) and SAMPLE_MODEL.is_file():
        return SAMPLE_MODEL
    places = ", ".join(str(d / f"{stem}.mp4") for d in dirs)
    raise ModelNotFoundError(f"model {name!r} not found; searched {places}")


def resolve_model(spec: str, *, models_dir: Path | None = None) -> Path:
    """A model name or a path to a video (for the command line) -> the video file.

    An existing file named with any suffix is taken as it is: FFmpeg reads more than
    VIDEO_SUFFIXES (`clip.3gp`, `clip.MTS`, a still `photo.png`, which is a one-frame model).
    """
    path = Path(spec).expanduser()
    looks_like_path = (path.suffix.lower() in VIDEO_SUFFIXES or "/" in spec or "\\" in spec
                       or (path.suffix != "" and path.is_file()))
    if looks_like_path:
        if path.is_file():
            return path.resolve()
        if path.exists():
            raise ModelNotFoundError(f"{spec}: is not a video file")
        if "/" in spec or "\\" in spec:
            raise ModelNotFoundError(f"{spec}: no such file")
    try:
        return find_named_model(spec, models_dir=models_dir)
    except ModelNotFoundError as exc:
        if looks_like_path:  # `--model clip.mp4` meant a file here first
            raise ModelNotFoundError(f"{spec}: no such file, and {exc}") from None
        raise


def _lookup_order(video: Path) -> tuple[int, bool, str]:
    """Sort key of the videos of one folder: the order in which `find_named_model` tries suffixes."""
    return VIDEO_SUFFIXES.index(video.suffix.lower()), video.suffix not in VIDEO_SUFFIXES, video.name


def list_model_videos(*, models_dir: Path | None = None) -> list[Path]:
    """Every model video in the search folders, one per name, sorted by name.

    For a name found more than once, the video `find_named_model` picks wins: the first folder,
    then the first of VIDEO_SUFFIXES (`alice.mp4` over `alice.mov`).
    """
    found: dict[str, Path] = {}
    for d in search_dirs(models_dir):
        if not d.is_dir():
            continue
        videos = [p for p in d.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
        for p in sorted(videos, key=_lookup_order):
            found.setdefault(model_name(p), p)
    return [found[k] for k in sorted(found)]


def served_models(*, models_dir: Path | None = None) -> dict[str, Path]:
    """Name -> video of every model a remote caller (HTTP, gRPC) can fetch by name, sorted by name.

    Each video is the one `find_named_model` gives for its name, so every listed name can be
    fetched and serves that file. Names it refuses (`my clip`) are left out; the bundled sample is
    in whenever no model video shadows its name.
    """
    names = {model_name(v) for v in list_model_videos(models_dir=models_dir)}
    if SAMPLE_MODEL.is_file():
        names.add(model_name(SAMPLE_MODEL))
    served: dict[str, Path] = {}
    for name in sorted(n for n in names if is_valid_name(n)):
        try:
            served[name] = find_named_model(name, models_dir=models_dir)
        except ModelNotFoundError:  # listed under a name that finds no file (`alice.MP4` on Linux)
            continue
    return served


def default_model(*, models_dir: Path | None = None) -> Path:
    """The model to use when none is named: the only one found, else the bundled sample."""
    videos = list_model_videos(models_dir=models_dir)
    if len(videos) == 1:
        return videos[0]
    if not videos and SAMPLE_MODEL.is_file():
        return SAMPLE_MODEL
    if not videos:
        raise ModelNotFoundError("no model videos found and the bundled sample is missing; pass --model PATH")
    names = ", ".join(model_name(v) for v in videos)
    raise ModelNotFoundError(f"several models found ({names}): pick one with --model NAME")
