"""Long fuzzing runs of the loaders and servers (the short runs are tests/test_fuzz.py).

    python bench/fuzz.py --target audio --seconds 600                     # hypothesis (property-based)
    python bench/fuzz.py --target audio --seconds 600 --engine atheris    # coverage-guided (libFuzzer)

Targets and their contracts are in tests/fuzz_support.py: audio (load_audio on damaged WAV, FLAC,
OGG, MP3 and M4A files), video (probe_video / iter_frames on damaged MP4s), cache (tampered or
truncated .npz caches through ModelStore.get), grpc (both services' request fields on a real
server), http (Range headers and model paths on the real `lipsync serve` app).

A failure does not stop the run: each is counted under its signature (exception type and the
innermost frame of lipsync_cli, or the contract broken) and the first case of each is printed. A
case that hangs past fuzz_support.HANG_LIMIT_S ends the run with every thread's stack. With
atheris, only Python code is instrumented (lipsync_cli, soundfile, starlette): the native decoders
(libsndfile, FFmpeg) are fuzzed through their inputs but guide nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

BATCH_EXAMPLES = 100  # hypothesis examples per batch; batches run until the time is up
INSTRUMENTED = ["lipsync_cli", "soundfile", "starlette"]  # the Python atheris's coverage is counted on
ATHERIS_RSS_LIMIT_MB = 6144
SHOWN_FAILURES = 20


def _record(findings: dict, case, exc: BaseException) -> None:
    import fuzz_support as F

    sig = F.signature(exc)
    entry = findings.setdefault(sig, {"signature": sig, "count": 0, "example": repr(case)[:400],
                                      "error": f"{type(exc).__name__}: {exc}"[:300]})
    entry["count"] += 1


def run_hypothesis(target_name: str, seconds: float) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings

    import fuzz_support as F

    work = Path(tempfile.mkdtemp(prefix=f"lipsync-fuzz-{target_name}-"))
    target = F.TARGETS[target_name](work)
    findings: dict = {}
    executions = 0

    # generate only: a failure is recorded and the run goes on, so there is nothing to shrink
    @settings(max_examples=BATCH_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy())
    def batch(case):
        nonlocal executions
        if time.monotonic() > end:
            return
        executions += 1
        try:
            with F.hang_guard():
                target.check(case)
        except Exception as exc:  # every failure is a finding; none stops the run
            _record(findings, case, exc)

    started = time.monotonic()
    end = started + seconds
    try:
        while time.monotonic() < end:
            batch()
    finally:
        if hasattr(target, "close"):
            target.close()
    return {"target": target_name, "engine": "hypothesis", "seconds": round(time.monotonic() - started, 1),
            "executions": executions, "findings": sorted(findings.values(), key=lambda f: -f["count"])}


def atheris_child(target_name: str, seconds: float, findings_file: Path) -> None:
    """Runs in its own process: libFuzzer ends it when the time is up."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        import soundfile  # noqa: F401
        import starlette.responses  # noqa: F401

        import lipsync_cli.media.audio  # noqa: F401
        import lipsync_cli.media.cache  # noqa: F401
        import lipsync_cli.media.store  # noqa: F401
        import lipsync_cli.media.video  # noqa: F401
        if target_name == "grpc":
            import lipsync_cli.rpc.legacy_service  # noqa: F401
            import lipsync_cli.rpc.service  # noqa: F401
        if target_name == "http":
            import lipsync_cli.web.http_server  # noqa: F401
    import fuzz_support as F

    work = Path(tempfile.mkdtemp(prefix=f"lipsync-atheris-{target_name}-"))
    target = F.TARGETS[target_name](work)
    corpus = work / "corpus"
    corpus.mkdir()
    for name, data in target.seed_files().items():
        (corpus / name).write_bytes(data)
    seen: set[str] = set()

    def one_input(data: bytes) -> None:
        try:
            target.from_bytes(data)
        except Exception as exc:  # recorded, not raised: libFuzzer would stop at the first
            sig = F.signature(exc)
            with findings_file.open("a") as f:
                f.write(json.dumps({"signature": sig, "new": sig not in seen, "input": data[:300].hex(),
                                    "error": f"{type(exc).__name__}: {exc}"[:300]}) + "\n")
            seen.add(sig)

    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", f"-timeout={F.HANG_LIMIT_S}",
                   f"-rss_limit_mb={ATHERIS_RSS_LIMIT_MB}", "-print_final_stats=1", "-max_len=200000",
                   str(corpus)], one_input)
    atheris.Fuzz()


def run_atheris(target_name: str, seconds: float) -> dict:
    findings_file = Path(tempfile.mkstemp(prefix="lipsync-atheris-", suffix=".jsonl")[1])
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--target", target_name, "--seconds", str(seconds),
                           "--engine", "atheris", "--child", str(findings_file)],
                          capture_output=True, text=True, errors="replace")
    log = proc.stderr
    executed = re.findall(r"stat::number_of_executed_units: (\d+)", log)
    coverage = re.findall(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+)", log)
    findings: dict = {}
    for line in findings_file.read_text().splitlines():
        item = json.loads(line)
        entry = findings.setdefault(item["signature"], {"signature": item["signature"], "count": 0,
                                                        "example": item["input"], "error": item["error"]})
        entry["count"] += 1
    died = [ln for ln in log.splitlines() if re.search(r"==\d+== ERROR|Uncaught Python exception|libFuzzer: ", ln)]
    return {"target": target_name, "engine": "atheris", "seconds": round(time.monotonic() - started, 1),
            "executions": int(executed[-1]) if executed else None,
            "coverage": {"cov": int(coverage[-1][0]), "ft": int(coverage[-1][1])} if coverage else None,
            "exit": proc.returncode, "process_failure": died[:5],
            "findings": sorted(findings.values(), key=lambda f: -f["count"])}


def show(result: dict) -> None:
    execs = result["executions"]
    rate = f"{execs / result['seconds']:.1f}/s" if execs and result["seconds"] else "?"
    print(f"{result['target']} ({result['engine']}): {result['seconds']} s, {execs} executions ({rate}), "
          f"{len(result['findings'])} unique failures" + (f", coverage {result['coverage']}" if result.get("coverage") else ""))
    for f in result["findings"][:SHOWN_FAILURES]:
        print(f"  {f['count']:6d}  {f['signature']}\n          {f['error'][:160]}\n          case: {f['example'][:200]}")
    if result.get("process_failure"):
        print("  the fuzzer process itself failed:", *result["process_failure"], sep="\n    ")


def main() -> None:
    import fuzz_support as F

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(F.TARGETS), required=True)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        atheris_child(args.target, args.seconds, args.child)
        return
    if args.engine == "atheris":
        try:
            import atheris  # noqa: F401
        except ImportError:
            sys.exit("atheris is not installed (pip install atheris; wheels exist for CPython 3.8-3.11 on Linux)")
        result = run_atheris(args.target, args.seconds)
    else:
        result = run_hypothesis(args.target, args.seconds)
    show(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
