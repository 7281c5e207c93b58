"""`lipsync serve`'s HTTP side, against real servers on free loopback ports and a real client.

The token endpoint is driven through the real `openai` SDK against a fake OpenAI server on
127.0.0.1 (OPENAI_BASE_URL), so no test needs the internet or a real key.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import threading
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers import make_shadowed_models
from lipsync_cli import serve as serve_module
from lipsync_cli.errors import LipsyncError, ServiceError
from lipsync_cli.media.store import ModelStore
from lipsync_cli.media.video import Mp4Writer
from lipsync_cli.serve import ServeSettings
from lipsync_cli.web.http_server import create_server
from lipsync_cli.web.options import HttpOptions
from lipsync_cli.web.token import RateLimiter, client_key

FAKE_SECRET_VALUE = "ek_test_0123456789"
FAKE_EXPIRES_AT = 1_900_000_000
OUTSIDE_BYTES = b"THIS FILE IS OUTSIDE THE MODEL FOLDER"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A real H.264 model video in a models folder, and a file beside the folder that must stay unread."""
    root = tmp_path_factory.mktemp("serve")
    models = root / "models"
    models.mkdir()
    rng = np.random.default_rng(7)
    with Mp4Writer(models / "clip.mp4", fps=Fraction(25), width=96, height=96) as writer:
        for _ in range(30):  # noise keeps x264 from squeezing the file to nothing
            writer.write_frame(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    (root / "secret.mp4").write_bytes(OUTSIDE_BYTES)
    (root / "secret.txt").write_bytes(OUTSIDE_BYTES)
    return {"root": root, "models": models, "video": models / "clip.mp4", "cache": root / "cache"}


def _options(**overrides) -> HttpOptions:
    # explicit None: a key or secret in the environment of the test run must not leak in
    return HttpOptions(**({"openai_api_key": None, "token_secret": None} | overrides))


def _store(media, models_dir: Path | None = None) -> ModelStore:
    return ModelStore(models_dir=models_dir or media["models"], cache_dir=media["cache"])


@pytest.fixture
def start(media):
    """Start servers on free ports; stops them after the test. start(models_dir=None, **options) -> base URL."""
    running = []

    def _start(models_dir: Path | None = None, **overrides) -> str:
        server, port = create_server(_store(media, models_dir), _options(**overrides), host="127.0.0.1", port=0)
        running.append(server)
        return f"http://127.0.0.1:{port}"

    yield _start
    for server in running:
        server.stop()


@pytest.fixture(scope="module")
def base_url(media):
    server, port = create_server(_store(media), _options(), host="127.0.0.1", port=0)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def _raw_get(base_url: str, raw_path: str) -> tuple[int, bytes]:
    """GET a path exactly as written: httpx would normalise `..` and re-encode it."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", raw_path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- the model video: ranges, HEAD, caching ----------------------------------------------------

def test_full_get_and_head(client, media):
    data = media["video"].read_bytes()
    r = client.get("/api/model-video/clip")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "video/mp4" and r.headers["accept-ranges"] == "bytes"
    head = client.head("/api/model-video/clip.mp4")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(data)
    assert head.headers["etag"] == r.headers["etag"] and head.headers["last-modified"]


def test_range_requests_return_the_file_bytes(client, media):
    data = media["video"].read_bytes()
    size = len(data)
    rng = random.Random(3)
    cases = [(0, 0), (100, 1099), (size - 10, size - 1)]
    cases += [(a, min(size - 1, a + rng.randrange(1, 20000))) for a in (rng.randrange(size) for _ in range(5))]
    for first, last in cases:
        r = client.get("/api/model-video/clip", headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206
        assert r.content == data[first:last + 1]
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
    suffix = client.get("/api/model-video/clip", headers={"Range": "bytes=-500"})
    assert suffix.status_code == 206 and suffix.content == data[-500:]
    open_ended = client.get("/api/model-video/clip", headers={"Range": f"bytes={size - 300}-"})
    assert open_ended.content == data[-300:]
    past_end_clipped = client.get("/api/model-video/clip", headers={"Range": f"bytes={size - 5}-{size + 999}"})
    assert past_end_clipped.status_code == 206 and past_end_clipped.content == data[-5:]
    head = client.head("/api/model-video/clip", headers={"Range": "bytes=10-19"})
    assert head.status_code == 206 and head.headers["content-range"] == f"bytes 10-19/{size}"
    multi = client.get("/api/model-video/clip", headers={"Range": "bytes=0-9,20-29"})
    assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
    assert data[0:10] in multi.content and data[20:30] in multi.content


def test_of_several_ranges_those_past_the_end_are_left_out(client, media):
    # RFC 9110 section 15.5.17: 416 only when none of the ranges is satisfiable
    data = media["video"].read_bytes()
    size = len(data)
    r = client.get("/api/model-video/clip", headers={"Range": f"bytes=0-9,{size + 5}-"})
    assert r.status_code == 206 and r.content == data[:10] and r.headers["content-range"] == f"bytes 0-9/{size}"
    r = client.get("/api/model-video/clip", headers={"Range": f"bytes={size}-,-0,10-19,{size + 1}-{size + 9}"})
    assert r.status_code == 206 and r.content == data[10:20]


def test_range_past_the_end_is_416(client, media):
    size = media["video"].stat().st_size
    for spec in (f"bytes={size}-", f"bytes={size + 100}-{size + 200}", f"bytes={size}-,-0"):
        r = client.get("/api/model-video/clip", headers={"Range": spec})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{size}"


def test_conditional_requests(client, media):
    first = client.get("/api/model-video/clip")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    for header in ({"If-None-Match": etag}, {"If-None-Match": f'"nope", W/{etag}'}, {"If-None-Match": "*"},
                   {"If-Modified-Since": modified}):
        r = client.get("/api/model-video/clip", headers=header)
        assert r.status_code == 304 and r.content == b"", header
        assert r.headers["etag"] == etag
    assert client.get("/api/model-video/clip", headers={"If-None-Match": '"other"'}).status_code == 200
    old = client.get("/api/model-video/clip", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert old.status_code == 200
    # a stale If-Range means "the file changed": the whole file, not the range
    stale = client.get("/api/model-video/clip", headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200 and len(stale.content) == media["video"].stat().st_size


def test_replaced_video_gets_a_new_etag(start, media, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    video = models / "clip.mp4"
    video.write_bytes(media["video"].read_bytes())
    url = start(models_dir=models)
    etag = httpx.get(f"{url}/api/model-video/clip").headers["etag"]
    video.write_bytes(media["video"].read_bytes()[:-1000])
    os.utime(video, (1_700_000_000, 1_700_000_000))
    r = httpx.get(f"{url}/api/model-video/clip", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag and len(r.content) == video.stat().st_size


def test_unknown_model_is_404_without_server_paths(client, media):
    r = client.get("/api/model-video/nobody")
    assert r.status_code == 404 and "nobody" in r.json()["error"]
    assert str(media["root"]) not in r.text and "model_videos" not in r.text


TRAVERSALS = [
    "../secret.mp4",
    "..%2fsecret.mp4",
    "%2e%2e%2fsecret.mp4",
    "%2E%2E%2Fsecret.txt",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "models/../../secret.mp4",
    "..%5csecret.mp4",
    "..\\secret.mp4",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "C:%5cWindows%5cwin.ini",
    "secret.mp4%00",
    "clip.mp4%00.txt",
    "..%252fsecret.mp4",
    "%c0%ae%c0%ae%c0%afsecret.mp4",
    "..",
    "x%0d%0aWARNING%20forged%20log%20line",
    "a" * 300,
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_is_refused_and_logged(base_url, name, caplog):
    caplog.set_level(logging.WARNING, logger="lipsync_cli.web.http_server")
    status, body = _raw_get(base_url, f"/api/model-video/{name}")
    assert status in (400, 404)
    assert OUTSIDE_BYTES not in body and b"root:" not in body
    refusals = [r for r in caplog.records if "refused model name" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    message = refusals[0].getMessage()
    assert refusals[0].levelno == logging.WARNING and "127.0.0.1:" in message
    # escaped: a name cannot forge log lines or carry control characters into the log
    assert message.isprintable() and message.isascii()


# --- model list, health, page ------------------------------------------------------------------

def test_models_list_and_health(client, media):
    models = client.get("/api/models").json()
    clip = next(m for m in models if m["name"] == "clip")
    assert clip == {"name": "clip", "url": "/api/model-video/clip", "size_bytes": media["video"].stat().st_size,
                    "duration_s": pytest.approx(1.2, abs=0.05), "fps": 25.0, "width": 96, "height": 96,
                    "prepared": False, "browser_url": "/api/model-video/clip"}
    for m in models:  # every listed model can be fetched
        assert client.head(m["url"]).status_code == 200
    assert client.get("/healthz").json() == {"ok": True}


def test_models_list_names_what_the_video_route_serves(start, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of the working directory's model folders
    models = make_shadowed_models(tmp_path)
    with httpx.Client(base_url=start(models_dir=models), timeout=10) as client:
        listed = {m["name"]: m for m in client.get("/api/models").json()}
        assert set(listed) == {"alice", "avatar"}, "'my clip' is no name the video route takes"
        alice = (models / "alice.mp4").read_bytes()
        assert (listed["alice"]["width"], listed["alice"]["size_bytes"]) == (64, len(alice))
        assert client.get(listed["alice"]["url"]).content == alice


def test_index_page_and_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="models"' in page.text and "app.js" in page.text and "//cdn" not in page.text
    script = client.get("/app.js")
    assert script.status_code == 200 and "/api/models" in script.text and "textContent" in script.text
    assert client.get("/style.css").status_code == 200


def test_loopback_server_refuses_foreign_host_names(client, base_url):
    port = base_url.rsplit(":", 1)[1]
    assert client.get("/healthz", headers={"Host": "rebound.example.com"}).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"app.localhost:{port}"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host


# --- the token endpoint ------------------------------------------------------------------------

class _FakeOpenAI(BaseHTTPRequestHandler):
    """Answers POST /v1/realtime/client_secrets like OpenAI: a secret, or a 401 that quotes the key."""

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
        if self.server.mode == "ok":
            status, answer = 200, {"value": FAKE_SECRET_VALUE, "expires_at": FAKE_EXPIRES_AT,
                                   "session": {"type": "realtime", "model": body["session"]["model"]}}
        else:
            key = self.headers["Authorization"].removeprefix("Bearer ")
            status, answer = 401, {"error": {"message": f"Incorrect API key provided: {key}.",
                                             "type": "invalid_request_error", "code": "invalid_api_key"}}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def fake_openai(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    server.mode, server.requests = "ok", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def api_key() -> str:
    return f"sk-test-{secrets.token_hex(16)}"


def _assert_no_key(key: str, response: httpx.Response, caplog) -> None:
    assert key not in response.text and key[:16] not in response.text
    assert all(key not in v for v in response.headers.values())
    assert key not in caplog.text and key[:16] not in caplog.text


def test_token_is_minted_and_key_never_shown(start, fake_openai, api_key, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and the server's included
    url = start(openai_api_key=api_key)
    for path in ("/api/token", "/token"):
        r = httpx.post(f"{url}{path}")
        assert r.status_code == 200
        assert r.json() == {"value": FAKE_SECRET_VALUE, "expires_at": FAKE_EXPIRES_AT}
        assert r.headers["cache-control"] == "no-store"
        _assert_no_key(api_key, r, caplog)
    sent = fake_openai.requests[0]
    assert sent["path"] == "/v1/realtime/client_secrets" and sent["auth"] == f"Bearer {api_key}"
    assert sent["body"]["expires_after"] == {"anchor": "created_at", "seconds": 600}
    assert sent["body"]["session"] == {"type": "realtime", "model": "gpt-realtime"}


def test_upstream_refusal_is_a_clear_502_without_the_key(start, fake_openai, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    fake_openai.mode = "unauthorized"
    url = start(openai_api_key=api_key)
    r = httpx.post(f"{url}/api/token")
    assert r.status_code == 502 and r.json() == {"error": "OpenAI refused to create a client secret (HTTP 401)"}
    _assert_no_key(api_key, r, caplog)


def test_unreachable_upstream_is_a_502(start, monkeypatch, api_key, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{s.getsockname()[1]}/v1")
    url = start(openai_api_key=api_key)
    r = httpx.post(f"{url}/token", timeout=30)
    assert r.status_code == 502 and "cannot reach the OpenAI API" in r.json()["error"]
    _assert_no_key(api_key, r, caplog)


def test_no_key_is_503_saying_what_to_set(client):
    r = client.post("/api/token")
    assert r.status_code == 503 and "OPENAI_API_KEY" in r.json()["error"]


def test_shared_secret_is_enforced(start, fake_openai, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    shared = "correct horse battery staple"
    url = start(openai_api_key=api_key, token_secret=shared)
    refused = [{}, {"Authorization": "Bearer wrong"}, {"X-Lipsync-Secret": "wrong"},
               {"Authorization": shared}, {"X-Lipsync-Secret": shared[:-1]}]
    for headers in refused:
        r = httpx.post(f"{url}/api/token", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
    assert not fake_openai.requests
    for headers in ({"Authorization": f"Bearer {shared}"}, {"X-Lipsync-Secret": shared}):
        assert httpx.post(f"{url}/token", headers=headers).json()["value"] == FAKE_SECRET_VALUE
    assert "refused a token request" in caplog.text and shared not in caplog.text


# --- the token endpoint's rate limit ----------------------------------------------------------

def _client_from(source_ip: str) -> httpx.Client:
    """A client whose connections leave from `source_ip` (all of 127.0.0.0/8 is loopback on Linux)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source_ip), timeout=10)


def test_token_rate_limit_refuses_the_31st_request_of_a_client(start, fake_openai, api_key, caplog):
    caplog.set_level(logging.WARNING, logger="lipsync_cli.web.token")
    url = start(openai_api_key=api_key)  # the default: 30 a minute
    with _client_from("127.0.0.1") as first:
        # both paths draw on one budget
        for i in range(30):
            r = first.post(f"{url}{('/api/token', '/token')[i % 2]}")
            assert r.status_code == 200, (i, r.text)
        refused = [first.post(f"{url}/api/token"), first.post(f"{url}/token"),
                   # uvicorn would believe this header from 127.0.0.1 by default; we must not
                   first.post(f"{url}/api/token", headers={"X-Forwarded-For": "203.0.113.9"})]
    for r in refused:
        assert r.status_code == 429 and "too many token requests" in r.json()["error"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
    assert len(fake_openai.requests) == 30, "a refused request reached OpenAI"
    # one warning per burst, not one per refused request
    assert sum("refused token requests" in m for m in caplog.messages) == 1
    with _client_from("127.0.0.2") as second:
        r = second.post(f"{url}/api/token")
        assert r.status_code == 200 and r.json()["value"] == FAKE_SECRET_VALUE


def test_token_rate_limit_counts_wrong_secrets_too(start, fake_openai, api_key):
    shared = "correct horse battery staple"
    url = start(openai_api_key=api_key, token_secret=shared, token_rate_per_min=3)
    for _ in range(3):
        assert httpx.post(f"{url}/api/token", headers={"X-Lipsync-Secret": "guess"}).status_code == 401
    # so a secret cannot be guessed faster than the limit
    r = httpx.post(f"{url}/api/token", headers={"X-Lipsync-Secret": shared})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert not fake_openai.requests


def test_token_rate_zero_turns_the_limit_off(start, fake_openai, api_key):
    url = start(openai_api_key=api_key, token_rate_per_min=0)
    with httpx.Client(timeout=10) as client:
        statuses = {client.post(f"{url}/api/token").status_code for _ in range(35)}
    assert statuses == {200} and len(fake_openai.requests) == 35


class _FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_rate_limiter_is_a_sliding_window_per_client():
    clock = _FakeClock()
    limiter = RateLimiter(2, window_s=60, clock=clock)
    assert limiter.admit("a").admitted
    clock.now_s += 10
    assert limiter.admit("a").admitted
    clock.now_s += 10
    assert tuple(limiter.admit("a")) == (False, 40, True)  # the first slot frees 60 s after it was taken
    clock.now_s += 10
    assert tuple(limiter.admit("a")) == (False, 30, False)
    assert limiter.admit("b").admitted, "another client has its own budget"
    clock.now_s += 30  # 60 s after the first request: its slot is free, the second's is not
    assert limiter.admit("a").admitted
    clock.now_s += 9.5
    assert tuple(limiter.admit("a")) == (False, 1, True)  # 0.5 s rounds up: Retry-After is whole seconds
    clock.now_s += 0.5
    assert limiter.admit("a").admitted


def test_rate_limiter_forgets_the_least_recent_client_beyond_its_bound():
    clock = _FakeClock()
    limiter = RateLimiter(1, max_clients=2, clock=clock)
    for client in ("a", "b", "c"):
        assert limiter.admit(client).admitted
    assert limiter.admit("a").admitted, "a was forgotten to keep memory bounded"
    assert not limiter.admit("c").admitted
    clock.now_s += 60  # a whole idle window: nothing left to count
    assert limiter.admit("c").admitted
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_clients_are_counted_by_ip_and_ipv6_hosts_by_their_64():
    assert client_key(("192.0.2.7", 5000)) == client_key(("192.0.2.7", 6000)) == "192.0.2.7"
    assert client_key(("192.0.2.7", 1)) != client_key(("192.0.2.8", 1))
    assert client_key(("2001:db8:1:2::1", 1)) == client_key(("2001:db8:1:2:ffff::9", 1)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:3::1", 1)) != client_key(("2001:db8:1:2::1", 1))
    assert client_key(("::ffff:192.0.2.7", 1)) == "192.0.2.7"
    assert client_key(None) == "unknown"


def test_cli_token_rate_reaches_the_settings(monkeypatch):
    from typer.testing import CliRunner

    from lipsync_cli.cli import app

    seen = []
    monkeypatch.setattr(serve_module, "run_serve", lambda settings, **kwargs: seen.append(settings))
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # leave the test run's logging alone
    runner = CliRunner()
    for args, expected in (([], 30), (["--token-rate", "0"], 0), (["--token-rate", "5"], 5)):
        result = runner.invoke(app, ["serve", "--max-models", "2", *args])
        assert result.exit_code == 0, result.output
        assert seen[-1].http.token_rate_per_min == expected and seen[-1].max_models == 2
    assert runner.invoke(app, ["serve", "--token-rate", "-1"]).exit_code != 0


def test_cors_is_off_by_default_and_exact_when_set(client, start):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    for r in (client.options("/api/token", headers=preflight),
              client.get("/api/models", headers={"Origin": "https://evil.example"})):
        assert "access-control-allow-origin" not in r.headers
    url = start(allowed_origins=("https://app.example",))
    ok = httpx.options(f"{url}/api/token", headers={"Origin": "https://app.example",
                                                     "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "authorization"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    ranged = httpx.get(f"{url}/api/model-video/clip", headers={"Origin": "https://app.example", "Range": "bytes=0-1"})
    assert ranged.headers["access-control-allow-origin"] == "https://app.example"
    assert "content-range" in ranged.headers["access-control-expose-headers"].lower()
    other = httpx.get(f"{url}/api/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# --- settings and the server's life -----------------------------------------------------------

def test_settings_are_validated_and_keep_secrets_out_of_repr(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("LIPSYNC_TOKEN_SECRET", "shh-from-env")
    settings = ServeSettings()
    assert settings.http.openai_api_key == "sk-from-env" and settings.http.token_secret == "shh-from-env"
    assert "sk-from-env" not in repr(settings) and "shh-from-env" not in repr(settings)
    assert settings.http.allowed_origins == () and settings.http.token_rate_per_min == 30
    for bad in ({"allowed_origins": ("app.example",)}, {"allowed_origins": ("https://app.example/",)},
                {"token_ttl_s": 5}, {"token_secret": " "}, {"token_rate_per_min": -1},
                {"token_rate_per_min": 1001}):
        with pytest.raises(LipsyncError):
            HttpOptions(**bad)
    with pytest.raises(LipsyncError):
        ServeSettings(max_models=0)


def test_server_binds_reports_its_port_and_stops(media):
    server, port = create_server(_store(media), _options(), port=0)
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["ok"] is True
    with pytest.raises(ServiceError, match="cannot listen"):
        create_server(_store(media), _options(), port=port)
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


SERVE_SCRIPT = """
import faulthandler, json, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it is stuck, if a test must ask
# a shell gives Ctrl-C its default handler; the test process may have passed SIGINT on ignored (an
# earlier test in the suite leaves it so, and an ignored signal stays ignored across exec)
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from lipsync_cli.serve import ServeSettings, run_serve
from lipsync_cli.web.options import HttpOptions
settings = ServeSettings(models_dir=Path(sys.argv[1]), cache_dir=Path(sys.argv[2]),
                         http=HttpOptions(openai_api_key=None))
run_serve(settings, host="127.0.0.1", port=0, grpc_port=0, on_ready=lambda urls: print(json.dumps(urls), flush=True))
print("stopped", flush=True)
"""


def test_run_serve_shares_one_model_store_between_http_and_grpc(media, monkeypatch):
    built, grpc_stores, asked = [], [], []

    class WatchedStore(ModelStore):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            built.append(self)

        def is_prepared(self, video: Path) -> bool:
            asked.append(self)
            return super().is_prepared(video)

    def grpc_server(*args, store, **kwargs):
        grpc_stores.append(store)
        return create_grpc_server(*args, store=store, **kwargs)

    create_grpc_server = serve_module.create_grpc_server
    monkeypatch.setattr(serve_module, "ModelStore", WatchedStore)
    monkeypatch.setattr(serve_module, "create_grpc_server", grpc_server)
    urls, ready, stop = {}, threading.Event(), threading.Event()
    settings = ServeSettings(models_dir=media["models"], cache_dir=media["cache"], max_models=2, http=_options())
    thread = threading.Thread(target=serve_module.run_serve, args=(settings,), daemon=True,
                              kwargs=dict(host="127.0.0.1", port=0, grpc_port=0, stop=stop,
                                          on_ready=lambda u: (urls.update(u), ready.set())))
    thread.start()
    try:
        assert ready.wait(60)
        assert any(m["name"] == "clip" for m in httpx.get(f"{urls['http']}api/models").json())
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert len(built) == 1 and built[0].limit == 2
    assert grpc_stores == built and asked and set(asked) == set(built)


def test_run_serve_serves_both_and_stops_on_ctrl_c(media, tmp_path):
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err_file:  # a file, not a pipe: a pipe nobody reads could fill and block it
        proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(media["models"]), str(media["cache"])],
                                stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        urls = json.loads(proc.stdout.readline())
        assert urls["http"].startswith("http://127.0.0.1:") and urls["grpc"].startswith("127.0.0.1:")
        assert httpx.get(f"{urls['http']}healthz").json()["ok"] is True
        with grpc.insecure_channel(urls["grpc"]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            # our service and the original system's answer on the same port
            for service in ("", "lipsync.v1.LipSync", "lipsyncsrv.LipSyncService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack to stderr
            time.sleep(2)
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"serve did not stop within 30 s of Ctrl-C; stdout {out!r}; threads:\n"
                        f"{errors.read_text()[-6000:]}")
        assert code == 0 and proc.stdout.read() == "stopped\n"
    finally:
        proc.kill()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{urls['http']}healthz")
