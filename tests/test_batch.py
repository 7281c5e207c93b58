"""Many renders at once: manifests, a plain list of inputs, and a Dask cluster that loses a worker mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_VIDEO, espeak_wav
from helpers import assert_clean_error, run_cli
from lipsync_cli.errors import InputError
from lipsync_cli.media.video import iter_frames
from lipsync_cli.render.batch import BatchOptions, run_batch
from lipsync_cli.render.jobs import jobs_for_inputs, plan_jobs, read_manifest
from lipsync_cli.render.pipeline import RenderOptions, render

LINES = ["Hello there.", "One more clip.", "Good morning to you.", "This is the fourth.", "Number five.",
         "And the last one."]


def assert_h264_aac(path: Path) -> None:
    """A finished, playable MP4: ffprobe finds an H.264 video and an AAC audio stream with a duration."""
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json",
                                      str(path)], capture_output=True, text=True, check=True).stdout)
    codecs = sorted(s["codec_name"] for s in info["streams"])
    assert codecs == ["aac", "h264"], (path, codecs)
    assert float(info["format"]["duration"]) > 0.3


def leftovers(folder: Path) -> list[str]:
    """Anything in an output folder that is not a finished MP4 (a temporary .part file, say)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix != ".mp4")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("speech")
    return [espeak_wav(folder / f"clip{i}.wav", text, rate_wpm=190) for i, text in enumerate(LINES)]


# ---- manifests ---------------------------------------------------------------------------------

def test_a_csv_manifest_reads_paths_from_its_own_folder(tmp_path):
    (tmp_path / "speech").mkdir()
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("audio,model,output\n"
                        "speech/a.wav,,out/a.mp4\n"
                        "\n"
                        "/abs/b.wav,alice,\n"
                        "c.wav,videos/bob.mov,/abs/c.mp4\n", encoding="utf-8")
    jobs = read_manifest(manifest)
    assert [j.audio for j in jobs] == [tmp_path / "speech" / "a.wav", Path("/abs/b.wav"), tmp_path / "c.wav"]
    assert [j.output for j in jobs] == [tmp_path / "out" / "a.mp4", tmp_path / "b.mp4", Path("/abs/c.mp4")]
    # a name stays a name; a video path is read from the manifest's folder too
    assert [j.model for j in jobs] == [None, "alice", str(tmp_path / "videos" / "bob.mov")]
    assert [j.source for j in jobs] == ["jobs.csv line 2", "jobs.csv line 4", "jobs.csv line 5"]
    # a job without an output goes to --output-dir when one is given
    assert read_manifest(manifest, output_dir=tmp_path / "elsewhere")[1].output == tmp_path / "elsewhere" / "b.mp4"


def test_a_json_lines_manifest_gives_the_same_jobs(tmp_path):
    csv_manifest = tmp_path / "jobs.csv"
    csv_manifest.write_text("audio,output,model\na.wav,x.mp4,alice\nb.wav,,\n", encoding="utf-8")
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"audio": "a.wav", "output": "x.mp4", "model": "alice"}\n\n{"audio": "b.wav", "model": null}\n',
                     encoding="utf-8")
    strip = lambda jobs: [(j.audio, j.output, j.model) for j in jobs]  # noqa: E731
    assert strip(read_manifest(jsonl)) == strip(read_manifest(csv_manifest))
    assert read_manifest(jsonl)[1].source == "jobs.jsonl line 3"


BAD_MANIFESTS = [
    ("jobs.csv", "file,output\na.wav,a.mp4\n", "line 1: the header must name the columns"),
    ("jobs.csv", "audio,speed\na.wav,2\n", "line 2: unknown key 'speed'"),
    ("jobs.csv", "audio,output\na.wav,a.mp4\nb.wav,b.mp4,extra\n", "line 3: 3 cells where the header has 2"),
    ("jobs.csv", "audio,output\n,a.mp4\n", "line 2: no audio file given"),
    ("jobs.csv", "audio,output\na.wav,a.avi\n", "line 2: the output a.avi must be an .mp4 file"),
    ("jobs.csv", "audio,output\na.wav,same.mp4\nb.wav,same.mp4\n", "line 2 and jobs.csv line 3 would both write"),
    ("jobs.csv", "audio,model,output\n", "lists no jobs"),
    ("jobs.jsonl", '{"audio": "a.wav"}\n{"audio": "b.wav",}\n', "line 2: not JSON"),
    ("jobs.jsonl", '["a.wav", "a.mp4"]\n', "line 1: each line must be one JSON object"),
    ("jobs.jsonl", '{"audio": 3}\n', "line 1: audio must be a string, not 3"),
    ("jobs.jsonl", '{"audio": "a.wav", "out": "a.mp4"}\n', "line 1: unknown key 'out'"),
    ("jobs.txt", "a.wav\n", "a manifest is a .csv"),
]


@pytest.mark.parametrize("name, text, needle", BAD_MANIFESTS)
def test_a_bad_manifest_row_is_one_line_naming_it(tmp_path, name, text, needle):
    manifest = tmp_path / name
    manifest.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert needle in message and "\n" not in message, message


def test_inputs_with_one_name_would_overwrite_each_other_and_are_refused(tmp_path):
    with pytest.raises(InputError, match="would both write"):
        jobs_for_inputs([Path("a/x.wav"), Path("b/x.wav")], tmp_path)


def test_existing_outputs_are_skipped_unless_overwriting(tmp_path):
    jobs = jobs_for_inputs([Path("a.wav"), Path("b.wav")], tmp_path)
    (tmp_path / "a.mp4").write_bytes(b"made before")
    plan = plan_jobs(jobs, overwrite=False)
    assert [j.audio.name for j in plan.todo] == ["b.wav"] and [j.audio.name for j in plan.skipped] == ["a.wav"]
    assert plan_jobs(jobs, overwrite=True).todo == tuple(jobs)


def test_the_command_line_refuses_a_bad_manifest_and_a_mixed_form_in_one_line(tmp_path):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("audio,output\na.wav,a.avi\n", encoding="utf-8")
    assert_clean_error(run_cli("render", "--manifest", manifest, cwd=tmp_path), "jobs.csv line 2", ".mp4")
    assert_clean_error(run_cli("render", "a.wav", "b.wav", "-o", "x.mp4", cwd=tmp_path), "--output-dir")
    assert list(tmp_path.iterdir()) == [manifest]


# ---- a plain list of inputs, in this machine ---------------------------------------------------

def test_many_inputs_skip_existing_and_list_failures_last(tmp_path, clips, cache_dir, store):
    out = tmp_path / "out"
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all\n" * 50)
    proc = run_cli("render", clips[0], bad, clips[1], "--output-dir", out, "--model", SAMPLE_VIDEO,
                   "--cache-dir", cache_dir, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    # the failure is listed at the end, after the other jobs were done, then the one-line verdict
    assert err[-2].startswith("failed") and "notes.wav" in err[-2] and "not a readable audio file" in err[-2], err
    assert err[-1] == "LipsyncError: 1 of 3 jobs failed (listed above)", err
    assert "2 of 3 written, 1 failed" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["clip0.mp4", "clip1.mp4"]
    for name in ("clip0.mp4", "clip1.mp4"):
        assert_h264_aac(out / name)
    before = (out / "clip0.mp4").stat().st_mtime_ns

    # again with a third input: the two made already are kept as they are
    proc = run_cli("render", clips[0], clips[1], clips[2], "--output-dir", out, "--model", SAMPLE_VIDEO,
                   "--cache-dir", cache_dir, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 3 written, 2 skipped" in proc.stdout
    assert (out / "clip0.mp4").stat().st_mtime_ns == before
    assert_h264_aac(out / "clip2.mp4")

    # --overwrite renders an existing output again (in this process: the same code the command calls)
    (out / "clip0.mp4").write_bytes(b"stale")
    report = run_batch(jobs_for_inputs([clips[0]], out), store=store,
                       options=BatchOptions(render=RenderOptions(model=str(SAMPLE_VIDEO)), overwrite=True))
    assert len(report.written) == 1 and not report.skipped and not report.failed
    assert_h264_aac(out / "clip0.mp4")
    assert leftovers(out) == []


# ---- on a Dask cluster -------------------------------------------------------------------------

def _wait_for_first_output(folder: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if folder.is_dir() and any(p.suffix == ".mp4" and not p.name.startswith(".") for p in folder.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"the render ended before any output (exit {proc.returncode}):\n{proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no output from the cluster in time")


def test_a_cluster_that_loses_a_worker_mid_run_still_delivers_every_video(tmp_path, clips, monkeypatch, store):
    distributed = pytest.importorskip("distributed")
    import dask

    worker_cache = tmp_path / "worker-cache"  # the workers' own cache, not this process's
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(worker_cache))
    out = tmp_path / "out"
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=None, silence_logs=40)
    try:
        client = distributed.Client(cluster)
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)  # worker address -> process id
        proc = subprocess.Popen([sys.executable, "-m", "lipsync_cli", "render", *map(str, clips), "--output-dir",
                                 str(out), "--model", str(SAMPLE_VIDEO), "--cluster", cluster.scheduler_address],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_first_output(out, proc, timeout_s=240)
        busy = [address for address, keys in client.processing().items() if keys and address in pids]
        assert busy, "no worker was rendering once the first video was in"
        os.kill(pids[busy[0]], signal.SIGKILL)  # mid-job: its render is lost with it
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
        client.close()
        cluster.close()
    assert proc.returncode == 0, stderr
    assert "6 of 6 written, 0 failed" in stdout, stdout
    assert sorted(p.name for p in out.iterdir()) == [f"clip{i}.mp4" for i in range(6)]
    assert leftovers(out) == []
    for path in sorted(out.iterdir()):
        assert_h264_aac(path)
    # the model reached the workers by content and was prepared once in their cache
    (asset,) = (worker_cache / "assets").iterdir()
    assert (asset / SAMPLE_VIDEO.name).read_bytes() == SAMPLE_VIDEO.read_bytes()
    assert len(list(worker_cache.glob("*.npz"))) == 1
    # the cluster renders what this process renders
    here = tmp_path / "here.mp4"
    render(clips[5], here, options=RenderOptions(model=str(SAMPLE_VIDEO)), store=store)
    a, b = list(iter_frames(here)), list(iter_frames(out / "clip5.mp4"))
    assert len(a) == len(b)
    assert max(int(np.abs(x.astype(np.int16) - y).max()) for x, y in zip(a, b)) <= 2
