"""The `lipsync` command line: parse, validate, call the core, print.

Typer and rich live here only. Every failure the core raises on purpose is a LipsyncError; it is
printed as one red line `Name: message` with exit code 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import cv2  # noqa: F401  (cv2 before av in every process that may open a window)
import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lipsync_cli.defaults import (DEFAULT_DRAIN_S, DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT,
                                   DEFAULT_REALTIME_MODEL, DEFAULT_VOICE)
from lipsync_cli.errors import LipsyncError
from lipsync_cli.media.store import DEFAULT_MODEL_LIMIT
from lipsync_cli.web.options import DEFAULT_TOKEN_RATE_PER_MIN, MAX_TOKEN_RATE_PER_MIN, HttpOptions

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Make an avatar video speak: lip-sync speech onto a model video.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ModelsDir = typer.Option(None, "--models-dir", help="Folder searched first for model videos by name.")
CacheDir = typer.Option(None, "--cache-dir", envvar="LIPSYNC_CACHE_DIR",
                        help="Where model caches live (default: ~/.cache/lipsync).")


@contextlib.contextmanager
def progress_bar() -> Iterator:
    """A rich progress bar in a terminal; nothing in pipes and tests. Yields a ProgressFn."""
    bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total or None)
        bar.update(tasks[stage], completed=done, total=total or None)

    with bar:
        yield update


def _store(models_dir: Optional[Path], cache_dir: Optional[Path], progress=None):
    from lipsync_cli.media.store import ModelStore

    return ModelStore(cache_dir=cache_dir, models_dir=models_dir, progress=progress)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


@app.command()
def prepare(
    models: List[str] = typer.Argument(None, help="Model names or video paths. None: every video found."),
    models_dir: Optional[Path] = ModelsDir,
    cache_dir: Optional[Path] = CacheDir,
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is up to date."),
) -> None:
    """Decode, track the face and mouth, and cache each model video (instant when unchanged)."""
    from lipsync_cli.media.cache import prepare_model
    from lipsync_cli.media.models import list_model_videos, resolve_model, search_dirs

    videos = [resolve_model(m, models_dir=models_dir) for m in models] if models else \
        list_model_videos(models_dir=models_dir)
    if not videos:
        places = ", ".join(str(d) for d in search_dirs(models_dir))
        raise LipsyncError(f"no model videos found in {places}; name a video: lipsync prepare PATH.mp4")
    for video in videos:
        with progress_bar() as progress:
            result = prepare_model(video, cache_dir=cache_dir, force=force, progress=progress)
        name = video.stem
        if result.status == "fresh":
            out.print(f"[green]{name}[/]: up to date, nothing to do ({result.seconds:.2f} s)")
            continue
        if result.status == "rebuilt":
            console.print(f"[yellow]{name}[/]: rebuilt the cache because {result.reason}")
        frames = "1 frame (a still)" if result.n_frames == 1 else f"{result.n_frames} frames at {result.fps:g} fps"
        out.print(f"[green]{name}[/]: {frames}, face found in "
                  f"{result.face_found_pct:.0f}% of frames, cache {_mb(result.cache_bytes)}, "
                  f"{result.seconds:.1f} s -> {result.cache}")


@app.command()
def render(
    audio: List[Path] = typer.Argument(None, metavar="AUDIO...", help="Speech: WAV (any rate, channels, sample "
                                       "type), FLAC, OGG, MP3, M4A. One file with -o, or several with --output-dir."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="The MP4 to write (H.264 + AAC)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Batch: write NAME.mp4 here for each "
                                              "input NAME.wav (made if missing)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Batch: the jobs, as CSV (columns audio, "
                                            "model, output) or JSON Lines (one object a line, same keys)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Batch: render again the jobs whose output exists "
                                   "(default: skip them)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Batch: render this many at once, in "
                                       "as many local worker processes."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Batch: run the jobs on a Dask cluster, "
                                          "given its scheduler (tcp://HOST:8786)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or video path "
                                        "(default: the only model found, else the bundled sample)."),
    server: Optional[str] = typer.Option(None, "--server", help="A running lip-sync service: HOST:PORT, "
                                         "a comma-separated list, or dns:///NAME:PORT (round-robin). "
                                         "Default: one started in-process."),
    models_dir: Optional[Path] = ModelsDir,
    cache_dir: Optional[Path] = CacheDir,
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Use your own ONNX lip-sync network "
                                        "(see docs/onnx-contract.md) instead of the built-in generator."),
    crf: int = typer.Option(20, "--crf", min=0, max=51, help="H.264 quality: lower is better."),
    preset: str = typer.Option("veryfast", "--preset", help="x264 preset (ultrafast ... veryslow)."),
) -> None:
    """Render AUDIO spoken by the avatar into a finished MP4 (or many: --output-dir, --manifest)."""
    if not server:
        from lipsync_cli.core.phones import start_recogniser

        start_recogniser()  # the phones' process starts while the rest of the render loads
    from lipsync_cli.render.pipeline import RenderOptions, render as run_render

    options = RenderOptions(model=model, server=server, preset=preset, crf=crf,
                            generator="onnx" if onnx else "own", onnx_path=onnx)
    audio = list(audio or [])
    if output_dir or manifest or jobs or cluster or len(audio) != 1 or output is None:
        _render_batch(audio, output, output_dir=output_dir, manifest=manifest, overwrite=overwrite, workers=jobs,
                      cluster=cluster, options=options, models_dir=models_dir, cache_dir=cache_dir)
        return
    with progress_bar() as progress:
        store = _store(models_dir, cache_dir, progress)
        summary = run_render(audio[0], output, options=options, store=store, progress=progress)
    fallback = f", [yellow]{summary.fallbacks} frames left untouched[/]" if summary.fallbacks else ""
    out.print(f"[green]{summary.output}[/]: {summary.frames} frames ({summary.duration_s:.2f} s, "
              f"{summary.width}x{summary.height}) of {summary.model}, {summary.speech_frames} with speech, "
              f"rendered in {summary.seconds:.1f} s ({summary.speed_x:.2f}x real time){fallback}")


def _render_batch(audio: list[Path], output: Optional[Path], *, output_dir: Optional[Path],
                  manifest: Optional[Path], overwrite: bool, workers: Optional[int], cluster: Optional[str],
                  options, models_dir: Optional[Path], cache_dir: Optional[Path]) -> None:
    """`render` with many inputs: check the form, plan, run, print each output and the failures last."""
    from lipsync_cli.render.batch import BatchOptions, run_batch
    from lipsync_cli.render.jobs import Job, jobs_for_inputs, read_manifest

    if manifest and audio:
        raise LipsyncError("give the audio files or --manifest, not both")
    if not manifest and not audio:
        raise LipsyncError("give the speech files to render (or --manifest JOBS.csv)")
    if output is not None and (manifest or output_dir or len(audio) > 1):
        raise LipsyncError("-o names the output of one input; for several use --output-dir DIR")
    if workers is not None and cluster is not None:
        raise LipsyncError("--jobs runs a local cluster and --cluster uses yours: give one of them")
    if manifest:
        job_list = read_manifest(manifest, output_dir=output_dir)
    elif output is not None:
        job_list = [Job(audio=audio[0], output=output)]
    elif output_dir is not None:
        job_list = jobs_for_inputs(audio, output_dir)
    else:
        raise LipsyncError("name where the video goes: -o OUT.mp4 for one input, --output-dir DIR for several")
    batch = BatchOptions(render=options, overwrite=overwrite, workers=workers, cluster=cluster, cache_dir=cache_dir)

    def written(result) -> None:
        if result.ok:
            where = f" on {result.worker}" if result.worker else ""
            out.print(f"[green]{result.job.output}[/]: {result.frames} frames ({result.duration_s:.2f} s) rendered "
                      f"in {result.seconds:.1f} s{where}", highlight=False)

    with progress_bar() as progress:
        report = run_batch(job_list, options=batch, store=_store(models_dir, cache_dir, progress),
                           progress=progress, on_result=written)
    skipped = (f", {len(report.skipped)} skipped (their output exists; --overwrite renders them again)"
               if report.skipped else "")
    out.print(f"{len(report.written)} of {len(job_list)} written{skipped}, {len(report.failed)} failed",
              highlight=False)
    for result in report.failed:
        console.print(f"[red]failed[/] {result.job.source or result.job.audio} -> {result.job.output}: "
                      f"{result.error}", highlight=False)
    if report.failed:
        raise LipsyncError(f"{len(report.failed)} of {len(job_list)} jobs failed (listed above)")

@app.command()
def serve(
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(DEFAULT_HTTP_PORT, "--port", min=0, max=65535, help="HTTP port (0: a free one)."),
    grpc_port: int = typer.Option(DEFAULT_GRPC_PORT, "--grpc-port", min=0, max=65535, help="gRPC port (0: a free one)."),
    models_dir: Optional[Path] = ModelsDir,
    cache_dir: Optional[Path] = CacheDir,
    allow_origin: List[str] = typer.Option([], "--allow-origin", help="A web origin allowed to call the API "
                                           "from a browser (CORS); repeat for more. Default: none."),
    token_secret: Optional[str] = typer.Option(None, "--token-secret", envvar="LIPSYNC_TOKEN_SECRET",
                                               help="A shared secret callers of /api/token must present."),
    max_models: int = typer.Option(DEFAULT_MODEL_LIMIT, "--max-models", min=1, help="Models kept loaded at once (LRU)."),
    token_rate: int = typer.Option(DEFAULT_TOKEN_RATE_PER_MIN, "--token-rate", min=0, max=MAX_TOKEN_RATE_PER_MIN,
                                   help="Token requests one client (IP address) may make per minute; 0: no limit."),
    max_streams: Optional[int] = typer.Option(None, "--max-streams", min=1,
                                              help="Streams and clips served at once; more are refused at once "
                                              "(\"the lip-sync service is full\"). Default: from the CPU cores."),
    realtime_url: Optional[str] = typer.Option(None, "--realtime-url", help="Where the web page's agent mode sends "
                                               "its WebRTC offer (default: OpenAI's Realtime calls endpoint)."),
    drain_s: float = typer.Option(DEFAULT_DRAIN_S, "--drain-s", min=0,
                                  help="On SIGTERM: seconds running streams get to finish before serve exits."),
) -> None:
    """Serve the model videos, the OpenAI token endpoint and the gRPC lip-sync service."""
    import logging

    from lipsync_cli.serve import ServeSettings, run_serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    http = HttpOptions(allowed_origins=tuple(allow_origin), token_rate_per_min=token_rate,
                       **({"token_secret": token_secret} if token_secret else {}),
                       **({"realtime_calls_url": realtime_url} if realtime_url else {}))
    settings = ServeSettings(models_dir=models_dir, cache_dir=cache_dir, max_models=max_models, http=http,
                             max_streams=max_streams, drain_s=drain_s)

    def ready(urls: dict[str, str]) -> None:
        out.print(f"web page and HTTP API: [bold]{urls['http']}[/]\ngRPC lip-sync service: [bold]{urls['grpc']}[/]"
                  "\nCtrl-C stops.")

    run_serve(settings, host=host, port=port, grpc_port=grpc_port, on_ready=ready)
    out.print("stopped")


@app.command()
def live(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or video path "
                                        "(default: the only model found, else the bundled sample)."),
    list_devices: bool = typer.Option(False, "--list-devices", help="List the audio devices and exit."),
    input: Optional[Path] = typer.Option(None, "--input", help="Play this audio file as if it were the "
                                         "microphone (and on the speakers), in real time; its phones are read "
                                         "first, so the mouth follows them as a render's does."),
    device: Optional[str] = typer.Option(None, "--device", help="Microphone: device index or part of its "
                                         "name (see --list-devices)."),
    record: Optional[Path] = typer.Option(None, "--record", help="Write what is shown, with its sound, "
                                          "to this MP4."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.1, help="Stop this many seconds after it "
                                             "starts playing (default: q, Esc or Ctrl-C; with --input, its end)."),
    server: Optional[str] = typer.Option(None, "--server", help="A running lip-sync service: HOST:PORT, "
                                         "a comma-separated list, or dns:///NAME:PORT. Default: none, the engine "
                                         "runs in this process."),
    agent: Optional[str] = typer.Option(None, "--agent", help="Talk with a voice agent: openai "
                                        "(OpenAI Realtime; needs OPENAI_API_KEY, honours OPENAI_BASE_URL)."),
    voice: str = typer.Option(DEFAULT_VOICE, "--voice", help="The agent's voice."),
    instructions: Optional[str] = typer.Option(None, "--instructions", help="How the agent behaves."),
    realtime_model: str = typer.Option(DEFAULT_REALTIME_MODEL, "--realtime-model", help="The OpenAI Realtime model."),
    models_dir: Optional[Path] = ModelsDir,
    cache_dir: Optional[Path] = CacheDir,
) -> None:
    """Make the avatar speak live: the microphone (or --input, or an agent's answers) in a window."""
    from lipsync_cli.live.agent import DEFAULT_INSTRUCTIONS, AgentOptions
    from lipsync_cli.live.audio_io import list_devices as audio_devices
    from lipsync_cli.errors import AgentError
    from lipsync_cli.live.session import LiveOptions, check_live, run_live

    if list_devices:
        devices = audio_devices()
        if not devices:
            out.print("no audio devices found")
        for d in devices:
            marks = ("default in " if d.is_default_input else "") + ("default out" if d.is_default_output else "")
            out.print(f"{d.index:3d}  {d.name} ({d.host_api}): {d.inputs} in, {d.outputs} out, "
                      f"{d.default_rate_hz} Hz {marks}".rstrip(), highlight=False)
        return
    if agent not in (None, "openai"):
        raise AgentError(f"unknown agent {agent!r}: the only one is openai")
    agent_options = AgentOptions(realtime_model=realtime_model, voice=voice,
                                 instructions=instructions or DEFAULT_INSTRUCTIONS) if agent else None
    options = LiveOptions(model=model, input=input, device=device, record=record, duration_s=duration,
                          server=server, agent=agent_options)
    speaking: list[str] = []  # the role whose transcript line is open

    def transcript(role: str, text: str, final: bool) -> None:
        if speaking and speaking[0] != role:
            out.print()
            speaking.clear()
        if not speaking and (text or final):
            out.print(f"[bold]{role}:[/] ", end="")
            speaking.append(role)
        out.print(text, end="", highlight=False, markup=False)
        if final:
            out.print()
            speaking.clear()

    check_live(options)  # no display or no key: say so before preparing anything
    with progress_bar() as progress:
        store = _store(models_dir, cache_dir, progress)
        store.open(model)  # prepared here, with a progress bar, before any window opens
    summary = run_live(options, store=store, on_transcript=transcript,
                       on_message=lambda text: console.print(f"[yellow]{text}[/]", highlight=False))
    latency = (f"{summary.latency_label} p50 {summary.latency_p50_ms:.0f} ms, p95 {summary.latency_p95_ms:.0f} ms"
               if summary.latency_p50_ms is not None else "no frames from the service")
    saved = f", recorded to [green]{summary.record}[/]" if summary.record else ""
    fallback = f", [yellow]{summary.fallbacks} shown untouched[/] (unusable mouth image)" if summary.fallbacks else ""
    out.print(f"{summary.frames_shown} frames shown ({summary.idle_frames} idle), {summary.frames_dropped} dropped, "
              f"{latency}, {summary.reconnects} reconnects, {summary.seconds:.1f} s{fallback}{saved}")


@app.command()
def check(
    video: Path = typer.Argument(..., help="A talking-head video: any file FFmpeg reads."),
    audio: Optional[Path] = typer.Argument(None, help="The sound to check it against (default: the video's "
                                           "own sound track)."),
    max_seconds: float = typer.Option(60.0, "--max-seconds", min=1.0, help="Measure only the first this "
                                      "many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on one line."),
) -> None:
    """Measure how far the mouth in VIDEO is from its sound (A/V sync), in frames and ms."""
    import json
    from dataclasses import asdict

    from lipsync_cli.analysis.avsync import SyncOptions, measure_sync

    with progress_bar() as progress:
        report = measure_sync(video, audio, options=SyncOptions(max_seconds=max_seconds), progress=progress)
    if as_json:
        fields = {**asdict(report), "in_sync": report.in_sync, "reliable": report.reliable,
                  "ambiguous": report.ambiguous,
                  "correlations": [c if c == c else None for c in report.correlations]}  # NaN is not JSON
        print(json.dumps(fields, separators=(",", ":")))
        return
    when = (f"in step with its sound ({report.offset_ms:+.0f} ms)" if report.offset_frames == 0 else
            f"{abs(report.offset_frames)} frame{'s' if abs(report.offset_frames) > 1 else ''} "
            f"({abs(report.offset_ms):.0f} ms) "
            f"{'after' if report.offset_frames > 0 else 'before'} its sound")
    out.print(f"{video}: the mouth is {when} ({report.frames} frames at {report.fps:g} fps, "
              f"{report.speech_frames} with speech, face found in {100 * report.face_found:.0f}%, "
              f"peak correlation {report.peak_correlation:.2f}, margin {report.margin:.2f})", highlight=False)
    if not report.reliable:
        console.print("[yellow]weak match[/]: the mouth barely follows this sound; is it the right sound, "
                      "and is the face talking?", highlight=False)
    elif report.ambiguous:
        console.print("[yellow]uncertain[/]: another offset matches nearly as well (too little speech to "
                      "tell them apart); measure a longer clip before acting on it", highlight=False)
    if not report.in_sync:
        fix = "delay" if report.offset_ms > 0 else "advance"
        console.print(f"[yellow]out of sync[/]: by more than one frame; {fix} the sound by "
                      f"{abs(report.offset_ms):.0f} ms to fix it", highlight=False)


# typer 0.2x vendors its own click: its usage errors derive from that copy's ClickException, not from
# the click package's, so both are caught (found by name in the MRO of an error typer raises)
_USAGE_ERRORS = tuple({cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"}
                      | {click.exceptions.ClickException})


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _interrupted() -> None:
    console.print("[yellow]Interrupted[/]: nothing was written")
    sys.exit(INTERRUPTED_EXIT_CODE)


def main() -> None:
    """Entry point: run the app, turning our errors into one clear line and exit code 1."""
    try:
        # without standalone mode typer does not exit: it returns the exit code of a typer.Exit, and
        # turns Ctrl-C into one (130), which would otherwise end the process with 0
        code = app(standalone_mode=False)
    except LipsyncError as exc:
        console.print(f"[red]{type(exc).__name__}[/]: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:  # a Ctrl-C before typer's own handler is in place
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("[yellow]Aborted[/]")
        sys.exit(1)
    except _USAGE_ERRORS as exc:  # an unknown option, a value out of range: click's usage message, no traceback
        exc.show()
        sys.exit(exc.exit_code)
    if code == INTERRUPTED_EXIT_CODE:
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)
