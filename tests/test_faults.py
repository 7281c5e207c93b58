"""Faults (issue 14, item 6): a full disk while writing an MP4 or a cache, and a service killed mid-render.

The disk is filled two ways: a file-size limit on the CLI's process (RLIMIT_FSIZE, SIGXFSZ ignored,
so a write fails with EFBIG as it would with ENOSPC), and, where this user may mount one, a small
tmpfs (ENOSPC itself). Either way: one clear line, no partial output, the previous cache intact.
The service is killed for real: two `create_server` processes, SIGKILL to the one rendering.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest

from conftest import REPO, SAMPLE_SPEECH, SAMPLE_VIDEO
from helpers import assert_clean_error, wait_until
from lipsync_cli.core.timing import frame_count
from lipsync_cli.errors import ServiceError
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio
from lipsync_cli.media.cache import cache_path
from lipsync_cli.render.pipeline import RenderOptions, render

MP4_LIMIT_BYTES = 200_000  # the sample render is about 580 KB: the writer fails part-way
TMPFS_BYTES = 400 * 1024
KILL_AT_FRAME = 10  # frames written before the serving replica is killed


# Sets the limit in a fresh interpreter that then becomes the CLI (exec): no preexec_fn, since forking
# this gRPC-loaded test process and running Python in the child before exec makes gRPC's fork
# handlers print to the child's stderr. SIG_IGN survives exec, so the write fails (EFBIG) instead of
# killing the process.
LIMITED_LAUNCHER = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
if limit >= 0:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.executable, [sys.executable, "-m", "lipsync_cli", *sys.argv[2:]])
"""


def _run_limited(*args, limit_bytes: int | None = None, timeout_s: float = 300):
    """`python -m lipsync_cli ARGS`, its files limited to limit_bytes each (a full disk for that process)."""
    limit = -1 if limit_bytes is None else limit_bytes
    return subprocess.run([sys.executable, "-c", LIMITED_LAUNCHER, str(limit), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A TMPFS_BYTES tmpfs mounted for the test; skipped where this user may not mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _assert_no_output(folder: Path) -> None:
    assert [p.name for p in folder.iterdir()] == [], "a partial or temporary file was left behind"


def test_a_full_disk_while_writing_the_mp4_leaves_nothing(tmp_path, cache_dir, sample_model):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = _run_limited("render", SAMPLE_SPEECH, "-o", out_dir / "out.mp4", "--cache-dir", cache_dir,
                        limit_bytes=MP4_LIMIT_BYTES)
    assert_clean_error(done, "OutputError", str(out_dir / "out.mp4"), "File too large")
    _assert_no_output(out_dir)


def test_a_full_tmpfs_while_writing_the_mp4_leaves_nothing(small_tmpfs, cache_dir, sample_model):
    done = _run_limited("render", SAMPLE_SPEECH, "-o", small_tmpfs / "out.mp4", "--cache-dir", cache_dir)
    assert_clean_error(done, "OutputError", "No space left on device")
    _assert_no_output(small_tmpfs)


def test_a_full_disk_while_writing_a_cache_keeps_the_previous_one(tmp_path, cache_dir, sample_model):
    # a cache folder of its own holding a copy of the session's good cache
    cache = cache_path(SAMPLE_VIDEO, tmp_path / "cache")
    cache.parent.mkdir()
    cache.write_bytes(cache_path(SAMPLE_VIDEO, cache_dir).read_bytes())
    before = cache.read_bytes()
    done = _run_limited("prepare", SAMPLE_VIDEO, "--force", "--cache-dir", cache.parent,
                        limit_bytes=len(before) // 2)
    assert_clean_error(done, "CacheError", "File too large")
    assert [p.name for p in cache.parent.iterdir()] == [cache.name], "a temporary cache file was left behind"
    assert cache.read_bytes() == before
    fresh = _run_limited("prepare", SAMPLE_VIDEO, "--cache-dir", cache.parent)
    assert fresh.returncode == 0 and "up to date" in fresh.stdout, fresh.stdout + fresh.stderr


# --- a replica killed mid-render ------------------------------------------------------------------

SERVER_SCRIPT = """
import sys, time
from pathlib import Path
from lipsync_cli.rpc.service import create_server
from lipsync_cli.media.store import ModelStore
sys.path.insert(0, {tests!r})
from test_service import CountingGenerator

class Marking(CountingGenerator):
    # writes the file `marker` when it renders its first frame: the test knows who is rendering
    marker = None
    def open_stream(self, model):
        stream = super().open_stream(model)
        marker = self.marker
        class Marked:
            def render(self, **kwargs):
                marker.touch()
                return stream.render(**kwargs)
        return Marked()

generator = Marking(delay_s=0.02)
server, port = create_server(store=ModelStore(cache_dir=Path({cache!r})), generator=generator)
generator.marker = Path({markers!r}) / str(port)
print(port, flush=True)
time.sleep(600)
"""


@pytest.fixture()
def two_replicas(tmp_path, cache_dir, sample_model):
    """Two service processes on free ports: [(process, port)], and the folder their markers go to."""
    markers = tmp_path / "markers"
    markers.mkdir()
    script = SERVER_SCRIPT.format(tests=str(REPO / "tests"), cache=str(cache_dir), markers=str(markers))
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        replicas = []
        for proc in procs:
            line = proc.stdout.readline()
            assert line, "a server process did not start (see its stderr above)"
            replicas.append((proc, int(line)))
        yield replicas, markers
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_render_carries_on_on_another_replica_when_its_server_is_killed(tmp_path, store, two_replicas):
    replicas, markers = two_replicas
    killed = []

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage == "rendering" and done == KILL_AT_FRAME and not killed:
            serving = [(proc, port) for proc, port in replicas if (markers / str(port)).exists()]
            assert len(serving) == 1, "one replica renders the clip"
            serving[0][0].send_signal(signal.SIGKILL)
            killed.append(serving[0][1])

    output = tmp_path / "out.mp4"
    server = ",".join(f"127.0.0.1:{port}" for _, port in replicas)
    summary = render(SAMPLE_SPEECH, output, options=RenderOptions(server=server), store=store, progress=progress)
    assert killed, "the render ended before a replica could be killed"
    survivor = [port for _, port in replicas if port not in killed]
    assert (markers / str(survivor[0])).exists(), "the other replica took over"
    expected = frame_count(len(load_audio(SAMPLE_SPEECH).samples), fps=25, sample_rate_hz=SAMPLE_RATE_HZ)
    assert summary.frames == expected
    assert _decoded_frames(output) == expected


def test_without_a_replica_list_a_killed_server_fails_the_render_cleanly(tmp_path, store, two_replicas):
    replicas, _ = two_replicas
    proc, port = replicas[0]

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage == "rendering" and done == KILL_AT_FRAME:
            proc.send_signal(signal.SIGKILL)

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ServiceError, match="went away mid-render"):
        render(SAMPLE_SPEECH, out_dir / "out.mp4", options=RenderOptions(server=f"127.0.0.1:{port}"), store=store,
               progress=progress)
    _assert_no_output(out_dir)


def test_an_atomic_write_is_whole_or_absent_and_gets_a_plain_mode(tmp_path):
    from lipsync_cli.errors import OutputError
    from lipsync_cli.media.files import FILE_MODE, atomic_write

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_write(target, error=OutputError) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [], "a failed write leaves nothing behind"
    with atomic_write(target, error=OutputError) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]
    # not mkstemp's 0600: a rendered MP4 is for sharing
    assert target.stat().st_mode & 0o777 == FILE_MODE and FILE_MODE & 0o044


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` holds `path` open (Linux: its /proc/PID/fd links)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(Path(os.readlink(fd)) == path for fd in fds.iterdir())
    except OSError:  # a descriptor closed while listing
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc to see the video opened")
def test_ctrl_c_during_prepare_exits_130_with_one_line_and_no_cache(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_cli", "prepare", SAMPLE_VIDEO, "--cache-dir", cache],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        # Ctrl-C once prepare has opened the video: its work is then seconds from done
        assert wait_until(lambda: _has_open(proc.pid, SAMPLE_VIDEO) or proc.poll() is not None, timeout_s=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, out, err)  # a script must not carry on as if it worked
    assert "Traceback" not in err and err.strip() == "Interrupted: nothing was written", err
    assert not cache.exists() or list(cache.iterdir()) == [], "an interrupted prepare left a cache file"
