"""Writing files so that a reader only ever sees a whole one: a temporary file beside the target,
renamed into place when complete, removed when anything fails (a full disk, Ctrl-C).

The finished file gets the mode a plain `open()` would give it (0666 less the umask), not the 0600
of `tempfile.mkstemp`: a rendered MP4 is for sharing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from lipsync_cli.errors import LipsyncError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once, at import: os.umask can only be read by setting it
FILE_MODE = 0o666 & ~_UMASK


def check_input_file(path: Path, *, error: type[LipsyncError], kind: str) -> None:
    """`error` with one line when `path` is missing, a folder or empty; `kind`: "audio", "video"."""
    if not path.exists():
        raise error(f"{path}: no such file")
    if path.is_dir():
        raise error(f"{path}: is a folder, not {'an' if kind[0] in 'aeiou' else 'a'} {kind} file")
    if path.stat().st_size == 0:
        raise error(f"{path}: the file is empty (0 bytes)")


def temporary_beside(path: Path, *, error: type[LipsyncError], suffix: str) -> tuple[int, Path]:
    """A new temporary file in `path`'s folder (fd, path); `error` with one line when it cannot be made."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=folder)
    except OSError as exc:
        raise error(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from exc
    return fd, Path(tmp)


def finish(tmp: Path, path: Path) -> None:
    """Give the finished temporary file its plain mode and rename it to `path` (atomic on one filesystem)."""
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


@contextmanager
def atomic_write(path: Path, *, error: type[LipsyncError], suffix: str = ".part") -> Iterator[BinaryIO]:
    """A binary file to write `path`'s content into; `path` appears only when the block ends cleanly.

    An OSError while writing (a full disk) becomes `error` with one line; nothing is left behind.
    """
    fd, tmp = temporary_beside(path, error=error, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        finish(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
