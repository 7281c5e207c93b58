"""Benchmark `/api/model-video/{name}` under concurrent Range requests, against nginx on the same file.

Each of --clients keep-alive connections asks for --range-bytes at random offsets until
--requests are done or --max-seconds pass, like many browsers seeking in one video. Every answer
is checked byte for byte against the file. The same load goes to Debian's nginx (started here
with a temporary config on a free loopback port, stopped after) serving the same file, in rounds
that alternate between the two servers; medians and the median paired ratio are printed.

The load generator runs in its own process so that it does not share the server's GIL; it is one
Python process, so nginx's figures are a lower bound on what nginx can do.

    python bench/http_bench.py [--video ../shared/data/speaker_man_1080x1920_25fps.mp4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import SPEAKER_VIDEO, need
from lipsync_cli.media.store import ModelStore
from lipsync_cli.web.http_server import create_server
from lipsync_cli.web.options import HttpOptions

DEFAULT_CLIENTS = 32
DEFAULT_REQUESTS = 1500
DEFAULT_ROUNDS = 3
DEFAULT_MAX_SECONDS = 15.0
DEFAULT_RANGE_BYTES = 1024 * 1024
WARMUP_REQUESTS = 64
NGINX_START_TIMEOUT_S = 10.0
# one worker, like the one uvicorn process it is compared with
NGINX_CONFIG = """
daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ video/mp4 mp4; }}
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


async def _one_client(port: int, path: str, data: bytes, range_bytes: int, budget: dict, seed: int) -> list[float]:
    """One keep-alive connection asking for ranges until the shared budget or time runs out."""
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies_s = []
    try:
        while budget["left"] > 0 and time.perf_counter() < budget["deadline"]:
            budget["left"] -= 1
            first = rng.randrange(len(data) - range_bytes + 1)
            last = first + range_bytes - 1
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nRange: bytes={first}-{last}\r\n\r\n"
            start = time.perf_counter()
            writer.write(request.encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status = int(head.split(" ", 2)[1])
            length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                          if line.lower().startswith("content-length:"))
            body = await reader.readexactly(length)
            latencies_s.append(time.perf_counter() - start)
            if status != 206 or body != data[first:last + 1]:
                raise RuntimeError(f"wrong answer from port {port}: HTTP {status}, {length} bytes")
    finally:
        writer.close()
    return latencies_s


async def _load(port: int, path: str, data: bytes, clients: int, requests: int, max_seconds: float,
                range_bytes: int) -> tuple[list[float], float]:
    budget = {"left": requests, "deadline": time.perf_counter() + max_seconds}
    start = time.perf_counter()
    per_client = await asyncio.gather(*(_one_client(port, path, data, range_bytes, budget, seed)
                                         for seed in range(clients)))
    return [t for client in per_client for t in client], time.perf_counter() - start


def run_load(port: int, path: str, video: str, clients: int, requests: int, max_seconds: float,
             range_bytes: int) -> dict:
    """Warm up, then measure: requests/s, latency percentiles (ms) and MB/s of the answers."""
    data = Path(video).read_bytes()
    asyncio.run(_load(port, path, data, min(clients, WARMUP_REQUESTS), WARMUP_REQUESTS, max_seconds, range_bytes))
    latencies_s, wall_s = asyncio.run(_load(port, path, data, clients, requests, max_seconds, range_bytes))
    latencies_s.sort()
    n = len(latencies_s)
    return {"requests": n, "wall_s": wall_s, "rps": n / wall_s, "mb_per_s": n * range_bytes / wall_s / 1e6,
            "p50_ms": latencies_s[n // 2] * 1e3, "p99_ms": latencies_s[min(n - 1, int(n * 0.99))] * 1e3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _start_nginx(nginx: str, root: Path, tmp: Path, workers: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    config = tmp / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(workers=workers, tmp=tmp, port=port, root=root))
    # -e: the error log before the config is read (the default path may not be writable)
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, NGINX_START_TIMEOUT_S)
    except OSError:
        proc.kill()
        raise SystemExit(f"nginx did not start: {proc.communicate()[1].decode(errors='replace')}")
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=SPEAKER_VIDEO)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="per server and round")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="per server and round")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--range-bytes", type=int, default=DEFAULT_RANGE_BYTES)
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--nginx-workers", type=int, default=1)
    args = parser.parse_args()
    video = need(args.video).resolve()
    if video.stat().st_size < args.range_bytes:
        raise SystemExit(f"{video} is smaller than one range ({args.range_bytes} bytes)")

    load = (args.clients, args.requests, args.max_seconds, args.range_bytes)
    rounds: dict[str, list[dict]] = {"lipsync": [], "nginx": []}
    with contextlib.ExitStack() as stack:
        server, port = create_server(ModelStore(models_dir=video.parent), HttpOptions(openai_api_key=None), port=0)
        stack.callback(server.stop)
        targets = {"lipsync": (port, f"/api/model-video/{video.stem}")}
        if Path(args.nginx).is_file():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lipsync-nginx-")))
            proc, nginx_port = _start_nginx(args.nginx, video.parent, tmp, args.nginx_workers)
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            targets["nginx"] = (nginx_port, f"/{video.name}")
        # spawn: a fresh interpreter, nothing inherited from this one's server threads
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(1))
        # rounds alternate between the servers, so a change in the machine's load hits both
        for _ in range(args.rounds):
            for name, (target_port, path) in targets.items():
                rounds[name].append(pool.apply(run_load, (target_port, path, str(video), *load)))

    print(f"{video.name}: {video.stat().st_size / 1e6:.1f} MB; {args.clients} clients, "
          f"{args.range_bytes // 1024} KiB ranges at random offsets, loopback; "
          f"median of {args.rounds} rounds of up to {args.requests} requests")
    print(f"{'server':<8} {'req/s':>8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, runs in rounds.items():
        if runs:
            row = {k: statistics.median(r[k] for r in runs) for k in ("rps", "mb_per_s", "p50_ms", "p99_ms")}
            print(f"{name:<8} {row['rps']:>8.0f} {row['mb_per_s']:>8.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}")
    if rounds["nginx"]:
        pairs = list(zip(rounds["lipsync"], rounds["nginx"]))
        rps_ratio = statistics.median(ours["rps"] / theirs["rps"] for ours, theirs in pairs)
        p99_ratio = statistics.median(ours["p99_ms"] / theirs["p99_ms"] for ours, theirs in pairs)
        print(f"lipsync / nginx ({args.nginx_workers} worker), median of paired rounds: "
              f"req/s x{rps_ratio:.2f}, p99 latency x{p99_ratio:.2f}")
    else:
        print(f"nginx not found at {args.nginx}: no comparison (apt-get install nginx)")


if __name__ == "__main__":
    main()
