"""Many renders at once: the jobs (speech in, MP4 out), where they come from and which are left to do.

A job list comes from audio files and an output folder (`lipsync render a.wav b.wav --output-dir out/`)
or from a manifest: CSV with a header row, or JSON Lines with one object per line, each with the keys
`audio` (required), `model` and `output` (optional). Relative paths in a manifest are read from the
manifest's folder, so a manifest travels with its files. Every problem with a manifest is one line
that names the file and the line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from lipsync_cli.errors import InputError
from lipsync_cli.media.models import VIDEO_SUFFIXES
from lipsync_cli.media.video import OUTPUT_SUFFIXES

MANIFEST_KEYS = ("audio", "model", "output")  # the columns (CSV) or keys (JSON Lines) a manifest may have
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
OUTPUT_SUFFIX = ".mp4"  # the output of a job that names none: <output folder>/<audio stem>.mp4


@dataclass(frozen=True)
class Job:
    """One render: `audio` spoken by `model` into the MP4 `output`."""

    audio: Path
    output: Path
    model: str | None = None  # a model name or video path; None: the batch's model (--model, else the default)
    source: str = ""  # where the job was given ("jobs.csv line 3"), for messages; "" for a plain input


@dataclass(frozen=True)
class JobResult:
    """How one job ended. Exactly one of: written (error == ""), or failed (error says why)."""

    job: Job
    error: str = ""  # "Name: message" of the failure; "" when the output was written
    frames: int = 0
    duration_s: float = 0.0  # length of the speech
    seconds: float = 0.0  # render wall time where it ran (a worker, or this process)
    fallbacks: int = 0  # frames left untouched because their mouth image was unusable
    worker: str = ""  # the Dask worker that rendered it; "" when rendered in this process

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Plan:
    """The jobs to run, and those whose output already exists (kept unless overwriting)."""

    todo: tuple[Job, ...]
    skipped: tuple[Job, ...]


def _output_for(audio: Path, output_dir: Path) -> Path:
    return output_dir / f"{audio.stem}{OUTPUT_SUFFIX}"


def _check_unique_outputs(jobs: list[Job]) -> None:
    """Two jobs writing one file would race and one result would be lost: refuse before any work."""
    seen: dict[Path, Job] = {}
    for job in jobs:
        key = job.output.resolve()
        if key in seen:
            first = seen[key]
            where = f"{first.source or first.audio} and {job.source or job.audio}"
            raise InputError(f"{where} would both write {job.output}: give them different outputs")
        seen[key] = job


def jobs_for_inputs(audios: list[Path], output_dir: Path, *, model: str | None = None) -> list[Job]:
    """One job per audio file, each writing `<output_dir>/<audio stem>.mp4`, in the order given."""
    jobs = [Job(audio=Path(a), output=_output_for(Path(a), Path(output_dir)), model=model) for a in audios]
    _check_unique_outputs(jobs)
    return jobs


def _relative_to(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _model_value(base: Path, value: str) -> str:
    """A model name stays a name; a video path is read from the manifest's folder like the others."""
    looks_like_path = Path(value).suffix.lower() in VIDEO_SUFFIXES or "/" in value or "\\" in value
    return str(_relative_to(base, value)) if looks_like_path else value


def _job_from_row(row: dict, *, base: Path, output_dir: Path, where: str) -> Job:
    unknown = sorted(k for k in row if k not in MANIFEST_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown {'key' if len(unknown) == 1 else 'keys'} {', '.join(map(repr, unknown))} "
                         f"(a job has {', '.join(MANIFEST_KEYS)})")
    values = {}
    for key in MANIFEST_KEYS:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{where}: {key} must be a string, not {json.dumps(value)}")
        values[key] = (value or "").strip()
    if not values["audio"]:
        raise InputError(f"{where}: no audio file given")
    audio = _relative_to(base, values["audio"])
    if values["output"]:
        output = _relative_to(base, values["output"])
        if output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise InputError(f"{where}: the output {values['output']} must be an .mp4 file")
    else:
        output = _output_for(audio, output_dir)
    model = _model_value(base, values["model"]) if values["model"] else None
    return Job(audio=audio, output=output, model=model, source=where)


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "audio" not in header:
        raise InputError(f"{path} line 1: the header must name the columns ({', '.join(MANIFEST_KEYS)}); "
                         f"found {', '.join(header) or 'nothing'}")
    reader.fieldnames = header
    rows = []
    for row in reader:
        where = f"{path.name} line {reader.line_num}"
        if None in row:  # more cells than the header has columns
            raise InputError(f"{where}: {len(header) + len(row[None])} cells where the header has {len(header)}")
        if not any((v or "").strip() for v in row.values()):
            continue  # a blank row
        rows.append((where, {k: v for k, v in row.items() if v is not None}))
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise InputError(f"{where}: each line must be one JSON object with {', '.join(MANIFEST_KEYS)}")
        rows.append((where, row))
    return rows


def read_manifest(path: Path, *, output_dir: Path | None = None) -> list[Job]:
    """The jobs a manifest lists, in its order.

    A `.csv` manifest has a header row naming its columns; a `.jsonl` (or `.ndjson`) one has one JSON
    object per line. Relative paths are read from the manifest's folder; a job without an output
    writes `<output_dir>/<audio stem>.mp4` (`output_dir` default: the manifest's folder). Raises
    InputError, one line naming the manifest line, for anything it cannot use.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise InputError(f"{path}: a manifest is a .csv (audio,model,output) or a .jsonl file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a spreadsheet export is not part of the header
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such manifest") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc})") from exc
    base = path.resolve().parent
    rows = _csv_rows(path, text) if suffix in CSV_SUFFIXES else _jsonl_rows(path, text)
    if not rows:
        raise InputError(f"{path}: the manifest lists no jobs")
    out_dir = Path(output_dir) if output_dir is not None else base
    jobs = [_job_from_row(row, base=base, output_dir=out_dir, where=where) for where, row in rows]
    _check_unique_outputs(jobs)
    return jobs


def plan_jobs(jobs: list[Job], *, overwrite: bool) -> Plan:
    """Split `jobs` into those to run and those whose output exists already (all run when overwriting)."""
    if overwrite:
        return Plan(todo=tuple(jobs), skipped=())
    todo = tuple(j for j in jobs if not j.output.exists())
    return Plan(todo=todo, skipped=tuple(j for j in jobs if j.output.exists()))
