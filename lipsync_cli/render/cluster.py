"""Render jobs on a Dask distributed cluster (`--cluster tcp://HOST:8786`) or on a local one (`--jobs N`).

What travels, and why:
- model videos (and an ONNX network) go to the workers once, by content: scattered to every worker
  under `lipsync-asset-<sha256>`, then written into the worker's own cache folder as
  `<cache>/assets/<sha256>/<file name>` if not there yet, so a worker in another folder or on another
  machine prepares each model once in its own cache and keeps it loaded between jobs;
- the speech travels with each job (its bytes), and the finished MP4's bytes come back; only this
  process writes into the output folder, atomically, so a job never leaves half a file behind.

A render task only reads its inputs and writes into its own temporary folder and (idempotently) the
worker's model cache, so running it twice is harmless: Dask reruns the jobs of a worker that dies on
another worker, and `retries` covers transient errors. A LipsyncError (bad audio, unknown model) is a
result, not an exception, so a user's mistake is reported once and not retried.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import dask
from distributed import CancelledError, Client, KilledWorker, LocalCluster, as_completed, get_worker

from lipsync_cli.errors import LipsyncError, OutputError, ServiceError
from lipsync_cli.media.cache import default_cache_dir
from lipsync_cli.media.files import atomic_write
from lipsync_cli.media.store import ModelStore
from lipsync_cli.progress import ProgressFn, report
from lipsync_cli.render.jobs import Job, JobResult
from lipsync_cli.render.pipeline import RenderOptions, render

try:  # one process prepares a model while the others sharing its cache wait (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows workers prepare side by side, which is slower but correct
    fcntl = None

TASK_RETRIES = 2  # reruns of a task that raised other than a LipsyncError (one whose worker died is rerun anyway)
MAX_RESUBMITS = 2  # times a job is sent again when the model bytes it needed were lost with every worker holding them
IN_FLIGHT_PER_THREAD = 2  # jobs queued per worker thread: one running, one waiting, so no worker idles
MIN_IN_FLIGHT = 4  # at least this many jobs are queued (workers that join later find work)
ASSET_KEY_PREFIX = "lipsync-asset-"  # + sha256: the key of a scattered file, the same on every run
# gRPC channels and servers do not survive fork(); every render starts its own service in its worker
WORKER_START_METHOD = "spawn"
WORKER_START_TIMEOUT_S = 120.0  # a spawned worker imports numpy, OpenCV, PyAV and gRPC: seconds on a busy machine

# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap threshold at
# 128 KiB: every frame-sized buffer (1-6 MB) is then a fresh mmap, page-faulted and unmapped, and a render
# runs 2-3x slower (bench/batch_bench.py). A worker raises both thresholds once, before its first job.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters (malloc.h)
WORKER_MMAP_THRESHOLD_BYTES = 32 << 20  # buffers below this come from the heap and are reused
WORKER_TRIM_THRESHOLD_BYTES = 64 << 20  # free heap kept before it is given back to the system

ResultFn = Callable[[JobResult], None]


@dataclass(frozen=True)
class Asset:
    """A file the workers get by content."""

    sha256: str  # hex digest of the bytes
    name: str  # its file name, kept so a model keeps its name on the worker


@dataclass(frozen=True)
class RenderTask:
    """One job as it travels to a worker: everything but the model's bytes, which come once per worker."""

    audio_name: str  # the input's file name; its suffix tells the decoder the format
    audio: bytes
    model: Asset
    onnx: Asset | None
    options: RenderOptions  # model and onnx_path are replaced by the worker's copies
    cache_dir: str | None  # None: the worker's own default cache folder


@dataclass(frozen=True)
class ClipResult:
    """What a worker sends back: the finished MP4 (or the error) and what the render measured."""

    mp4: bytes
    error: str  # "Name: message"; "" when mp4 holds the file
    frames: int
    duration_s: float
    seconds: float
    fallbacks: int
    worker: str


# ---- on the worker -----------------------------------------------------------------------------

_stores: dict[str | None, ModelStore] = {}  # per worker process and cache folder: models stay loaded between jobs
_malloc_tuned: list[bool] = []  # [True] once this worker process has raised its malloc thresholds


def _tune_malloc() -> None:
    """Undo the per-frame mmap churn Dask's MALLOC_TRIM_THRESHOLD_ causes (glibc only; a no-op elsewhere)."""
    if _malloc_tuned or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _malloc_tuned.append(True)
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD_BYTES)


def _store(cache_dir: str | None) -> ModelStore:
    if cache_dir not in _stores:
        _stores[cache_dir] = ModelStore(cache_dir=Path(cache_dir) if cache_dir else None)
    return _stores[cache_dir]


def materialize(asset: Asset, data: bytes, cache_dir: str | None) -> Path:
    """The asset as a file in this worker's cache folder, written (atomically) the first time."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / "assets" / asset.sha256 / asset.name
    if path.is_file():
        return path
    if hashlib.sha256(data).hexdigest() != asset.sha256:
        raise OutputError(f"{asset.name}: the bytes received do not match their sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    return path


@contextlib.contextmanager
def _prepare_lock(video: Path) -> Iterator[None]:
    """Held while a model is prepared, so workers sharing a cache prepare it once, not side by side."""
    if fcntl is None:
        yield
        return
    with open(video.parent / ".prepare.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def render_task(task: RenderTask, model_bytes: bytes, onnx_bytes: bytes | None = None) -> ClipResult:
    """Run one job on this worker: the speech and the model in, the MP4's bytes out."""
    worker = get_worker().address
    _tune_malloc()
    try:
        video = materialize(task.model, model_bytes, task.cache_dir)
        onnx = materialize(task.onnx, onnx_bytes, task.cache_dir) if task.onnx and onnx_bytes else None
        store = _store(task.cache_dir)
        with _prepare_lock(video):
            store.get(video)
        with tempfile.TemporaryDirectory(prefix="lipsync-job-") as tmp:
            audio = Path(tmp) / Path(task.audio_name).name
            audio.write_bytes(task.audio)
            out = Path(tmp) / "out.mp4"
            try:
                summary = render(audio, out, options=replace(task.options, model=str(video), onnx_path=onnx),
                                 store=store)
            except LipsyncError as exc:  # the message names the input as the user gave it, not our copy
                message = str(exc).replace(str(audio), task.audio_name)
                return ClipResult(b"", f"{type(exc).__name__}: {message}", 0, 0.0, 0.0, 0, worker)
            return ClipResult(out.read_bytes(), "", summary.frames, summary.duration_s, summary.seconds,
                              summary.fallbacks, worker)
    except LipsyncError as exc:
        return ClipResult(b"", f"{type(exc).__name__}: {exc}", 0, 0.0, 0.0, 0, worker)


# ---- on the client -----------------------------------------------------------------------------

def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder: `path` is whole or untouched."""
    with atomic_write(path, error=OutputError, suffix=".part" + path.suffix) as f:
        f.write(data)


class _Shipper:
    """The files sent to the cluster: one scatter per file, again only if every copy was lost."""

    def __init__(self, client: Client):
        self.client = client
        self._futures: dict[Path, tuple[Asset, object]] = {}

    def ship(self, path: Path, *, again: bool = False):
        """(Asset, future of its bytes on the workers) for the file at `path`."""
        path = Path(path).resolve()
        if path in self._futures and not again and self._futures[path][1].status == "finished":
            return self._futures[path]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OutputError(f"{path}: cannot read ({exc.strerror})") from exc
        asset = Asset(sha256=hashlib.sha256(data).hexdigest(), name=path.name)
        key = ASSET_KEY_PREFIX + asset.sha256
        # to every worker now, so losing one worker loses no copy; a worker that joins later fetches it from a peer
        future = self.client.scatter({key: data}, broadcast=True, hash=False)[key]
        self._futures[path] = (asset, future)
        return asset, future


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_on_cluster(client: Client, jobs: list[Job], *, options: RenderOptions, store: ModelStore,
                   cache_dir: Path | None = None, progress: ProgressFn | None = None,
                   on_result: ResultFn | None = None) -> list[JobResult]:
    """Render `jobs` on the cluster `client` is connected to; results in the order the jobs finish.

    Models are looked up here (`store`: names, --models-dir) and shipped by content. `cache_dir` is
    the workers' cache folder, for a local cluster sharing this machine's; None: each worker's own.
    `progress("jobs", done, total)` follows the jobs; `on_result` hears each as it ends.
    """
    progress, on_result = report(progress), on_result or (lambda result: None)
    shipper = _Shipper(client)
    results: list[JobResult] = []
    attempts: dict[int, int] = {}  # job index -> times submitted
    running: dict[object, int] = {}  # future -> job index
    pending = list(range(len(jobs)))[::-1]  # a stack: pop() gives the jobs in order
    in_flight = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
    finished = as_completed()

    def done(result: JobResult) -> None:
        results.append(result)
        on_result(result)
        progress("jobs", len(results), len(jobs))

    def submit(index: int, *, reship: bool = False) -> None:
        job = jobs[index]
        spec = job.model or options.model
        try:
            video = store.video_for(spec)
            model_asset, model_future = shipper.ship(video, again=reship)
            onnx_asset, onnx_future = (shipper.ship(options.onnx_path, again=reship) if options.onnx_path
                                       else (None, None))
            audio = job.audio.read_bytes()
        except LipsyncError as exc:
            return done(JobResult(job, error=_describe(exc)))
        except OSError as exc:
            return done(JobResult(job, error=f"AudioError: {job.audio}: cannot read ({exc.strerror})"))
        task = RenderTask(audio_name=str(job.audio), audio=audio, model=model_asset, onnx=onnx_asset,
                          options=replace(options, model=None, onnx_path=None),
                          cache_dir=str(cache_dir) if cache_dir else None)
        attempts[index] = attempts.get(index, 0) + 1
        future = client.submit(render_task, task, model_future, onnx_future, pure=False, retries=TASK_RETRIES,
                               key=f"lipsync-render-{index}-{attempts[index]}-{os.urandom(4).hex()}")
        running[future] = index
        finished.add(future)

    def top_up() -> None:
        while pending and len(running) < in_flight:
            submit(pending.pop())

    progress("jobs", 0, len(jobs))
    top_up()
    while running:
        future = next(finished)
        index = running.pop(future)
        job = jobs[index]
        try:
            clip: ClipResult = future.result()
        except KilledWorker as exc:  # it took down several workers: rerunning it again would not help
            where = getattr(exc.last_worker, "address", exc.last_worker)
            done(JobResult(job, error=f"KilledWorker: the workers running it died {exc.allowed_failures + 1} times, "
                                      f"last {where}"))
        except CancelledError as exc:
            # the model bytes it needed were lost with every worker that held them: send them again
            if attempts[index] <= MAX_RESUBMITS:
                submit(index, reship=True)
            else:
                done(JobResult(job, error=_describe(exc)))
        except Exception as exc:  # an error on the worker, after its retries: report it, do the other jobs
            done(JobResult(job, error=_describe(exc)))
        else:
            if clip.error:
                done(JobResult(job, error=clip.error, worker=clip.worker))
            else:
                try:
                    job.output.parent.mkdir(parents=True, exist_ok=True)
                    write_atomically(job.output, clip.mp4)
                except (LipsyncError, OSError) as exc:
                    done(JobResult(job, error=_describe(exc), worker=clip.worker))
                else:
                    done(JobResult(job, frames=clip.frames, duration_s=clip.duration_s, seconds=clip.seconds,
                                   fallbacks=clip.fallbacks, worker=clip.worker))
        finally:
            future.release()
        top_up()
    return results


@contextlib.contextmanager
def connect(address: str, *, timeout_s: float = 30.0) -> Iterator[Client]:
    """A client of the Dask scheduler at `address` (tcp://HOST:8786); a clear error when none answers."""
    try:
        client = Client(address, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise ServiceError(f"no Dask scheduler answers at {address} ({exc}); start one with `dask scheduler` "
                           "and workers with `dask worker ADDRESS`") from exc
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[Client]:
    """A client of a fresh cluster of `n_workers` spawned processes on this machine, one thread each."""
    with dask.config.set({"distributed.worker.multiprocessing-method": WORKER_START_METHOD}):
        cluster = LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                               dashboard_address=None, silence_logs=logging.ERROR)
    try:
        client = Client(cluster)
        try:
            client.wait_for_workers(n_workers, timeout=WORKER_START_TIMEOUT_S)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
