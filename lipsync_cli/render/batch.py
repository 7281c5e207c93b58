"""Run a list of render jobs: one after another in this process, on N local worker processes, or on a
Dask cluster. Whichever way, every output is written whole or not at all, existing outputs are kept
unless overwriting, and a failing job is reported without stopping the others.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from lipsync_cli.errors import LipsyncError
from lipsync_cli.media.store import ModelStore
from lipsync_cli.progress import ProgressFn, report
from lipsync_cli.render.cluster import ResultFn, connect, local_cluster, run_on_cluster
from lipsync_cli.render.jobs import Job, JobResult, plan_jobs
from lipsync_cli.render.pipeline import RenderOptions, render


@dataclass(frozen=True)
class BatchOptions:
    render: RenderOptions = field(default_factory=RenderOptions)  # for every job; a job's own model wins
    overwrite: bool = False  # render jobs whose output exists (default: keep the output, skip the job)
    workers: int | None = None  # --jobs: a local cluster of that many processes; None: in this process
    cluster: str | None = None  # a Dask scheduler's address (tcp://HOST:8786); wins over `workers`
    cache_dir: Path | None = None  # model caches of this machine's renders (local workers too)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1")


@dataclass(frozen=True)
class BatchReport:
    results: tuple[JobResult, ...]  # the jobs that ran, in the order they finished
    skipped: tuple[Job, ...]  # their output existed already

    @property
    def written(self) -> tuple[JobResult, ...]:
        return tuple(r for r in self.results if r.ok)

    @property
    def failed(self) -> tuple[JobResult, ...]:
        return tuple(r for r in self.results if not r.ok)


def run_here(jobs: list[Job], *, options: RenderOptions, store: ModelStore, progress: ProgressFn | None = None,
             on_result: ResultFn | None = None) -> list[JobResult]:
    """Render `jobs` one after another in this process (each output written atomically by `render`)."""
    progress, on_result = report(progress), on_result or (lambda result: None)
    results: list[JobResult] = []
    progress("jobs", 0, len(jobs))
    for job in jobs:
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            summary = render(job.audio, job.output, options=replace(options, model=job.model or options.model),
                             store=store)
            result = JobResult(job, frames=summary.frames, duration_s=summary.duration_s, seconds=summary.seconds,
                               fallbacks=summary.fallbacks)
        except LipsyncError as exc:
            result = JobResult(job, error=f"{type(exc).__name__}: {exc}")
        except OSError as exc:  # the output folder could not be made
            result = JobResult(job, error=f"OutputError: {job.output.parent}: {exc.strerror or exc}")
        results.append(result)
        on_result(result)
        progress("jobs", len(results), len(jobs))
    return results


@contextlib.contextmanager
def _client(options: BatchOptions) -> Iterator:
    if options.cluster:
        with connect(options.cluster) as client:
            yield client
    else:
        with local_cluster(options.workers or 1) as client:
            yield client


def run_batch(jobs: list[Job], *, options: BatchOptions, store: ModelStore, progress: ProgressFn | None = None,
              on_result: ResultFn | None = None) -> BatchReport:
    """Render the jobs whose output is missing (all with `overwrite`) and report how each ended.

    `progress("jobs", done, total)` follows the whole batch; `on_result` hears each job as it ends.
    A failing job never stops the others; the caller decides what failures mean (the CLI exits 1).
    """
    plan = plan_jobs(jobs, overwrite=options.overwrite)
    if not plan.todo:
        return BatchReport(results=(), skipped=plan.skipped)
    if options.cluster is None and options.workers is None:
        results = run_here(list(plan.todo), options=options.render, store=store, progress=progress,
                           on_result=on_result)
    else:
        # a remote cluster's workers use their own cache folders; local workers share this machine's
        cache_dir = None if options.cluster else options.cache_dir
        with _client(options) as client:
            results = run_on_cluster(client, list(plan.todo), options=options.render, store=store,
                                     cache_dir=cache_dir, progress=progress, on_result=on_result)
    return BatchReport(results=tuple(results), skipped=plan.skipped)
