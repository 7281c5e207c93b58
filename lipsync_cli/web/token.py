"""`POST /api/token` (and `/token`): mint a short-lived OpenAI Realtime client secret, guarded.

Guards, in order: a per-client rate limit (on by default), the shared secret (when set), then the
server's OpenAI key. A refused request never reaches OpenAI. The answer carries only the secret
and its expiry, never the server's key.

The rate limit counts requests per client, where the client is the connection's peer IP address
(an IPv6 peer by its /64, which one host usually holds whole). No forwarded header is trusted
(uvicorn runs with proxy headers off): behind a reverse proxy every request comes from the
proxy's address and all callers share one budget, so limit there, or turn this one off with
`--token-rate 0`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import threading
import time
from collections import deque
from typing import Callable, NamedTuple

import openai
from cachetools import TTLCache
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from lipsync_cli import metrics
from lipsync_cli.web.options import HttpOptions
from lipsync_cli.web.responses import describe_peer, json_error

LOG = logging.getLogger(__name__)

OPENAI_TIMEOUT_S = 15.0
OPENAI_MAX_RETRIES = 1  # a page asks again anyway; more retries only keep it waiting
SECRET_HEADER = "x-lipsync-secret"
RATE_WINDOW_S = 60.0  # the rate is "at most N in any RATE_WINDOW_S seconds"
# clients remembered at once; memory is at most this many windows of `limit` timestamps each
MAX_TRACKED_CLIENTS = 10_000
IPV6_CLIENT_PREFIX = 64  # one IPv6 host usually holds a whole /64: count it as one client


class Admission(NamedTuple):
    """What RateLimiter.admit decided for one request."""

    admitted: bool
    retry_after_s: int  # whole seconds until a slot frees; 0 when admitted
    first_refusal: bool  # the client's first refusal since its last admitted request (log that one)


class _Window:
    __slots__ = ("admitted_at", "refusals")

    def __init__(self, limit: int):
        self.admitted_at: deque[float] = deque(maxlen=limit)  # clock seconds, oldest first
        self.refusals = 0


class RateLimiter:
    """At most `limit` admitted requests per client in any `window_s` seconds (a sliding window log).

    Thread-safe. Memory is bounded: a client idle for a whole window is forgotten (it has nothing
    left to count), and beyond `max_clients` the least recently seen one is forgotten first.
    Refused requests are not counted, so a client that keeps asking gets in as soon as a slot frees.
    `clock` is monotonic seconds (tests pass a fake one).
    """

    def __init__(self, limit: int, *, window_s: float = RATE_WINDOW_S, max_clients: int = MAX_TRACKED_CLIENTS,
                 clock: Callable[[], float] = time.monotonic):
        if limit < 1:
            raise ValueError("the rate limit must be at least 1 request per window")
        self.limit, self.window_s = limit, window_s
        self._clock = clock
        # set on each admitted request, so an entry expires when its newest timestamp leaves the window
        self._windows: TTLCache[str, _Window] = TTLCache(maxsize=max_clients, ttl=window_s, timer=clock)
        self._lock = threading.Lock()

    def admit(self, client: str) -> Admission:
        """Count one request of `client` if it is within the limit; otherwise say how long to wait."""
        with self._lock:
            now = self._clock()
            window = self._windows.get(client) or _Window(self.limit)
            times = window.admitted_at
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) < self.limit:
                times.append(now)
                window.refusals = 0
                self._windows[client] = window
                return Admission(True, 0, False)
            window.refusals += 1
            # the oldest admitted request leaves the window first; at least 1 s, as Retry-After is whole
            retry_after_s = max(1, math.ceil(times[0] + self.window_s - now))
            return Admission(False, retry_after_s, window.refusals == 1)


def client_key(peer: tuple[str, int] | None) -> str:
    """The rate limit's name for a connection's peer (ASGI `scope["client"]`, `(host, port)` or None).

    Its IP address; an IPv6 peer by its /64, an IPv4-mapped IPv6 peer by its IPv4 address.
    """
    if not peer:
        return "unknown"
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:  # not an IP (a Unix socket's path, say): the name as given
        return str(peer[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


def _presented_secret(headers: Headers) -> bytes:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    presented = value.strip() if scheme.lower() == "bearer" else headers.get(SECRET_HEADER, "")
    # header values arrive decoded as latin-1; back to the bytes the caller sent
    return presented.encode("latin-1", errors="replace")


class TokenEndpoint:
    """The token route's state (the OpenAI client, the rate limiter) and its handler, `mint`."""

    def __init__(self, options: HttpOptions):
        self._options = options
        self.limiter = RateLimiter(options.token_rate_per_min) if options.token_rate_per_min else None
        self._openai = None
        if options.openai_api_key:
            # base_url None: the SDK takes OPENAI_BASE_URL, else the real API
            self._openai = openai.OpenAI(api_key=options.openai_api_key, timeout=OPENAI_TIMEOUT_S,
                                         max_retries=OPENAI_MAX_RETRIES)

    def mint(self, request: Request) -> JSONResponse:
        """Answer one token request: 200 `{value, expires_at}`, or 429, 401, 503, 502 as `{error}`."""
        # first, and counting every request: a shared secret cannot be guessed faster than the limit
        if self.limiter is not None:
            admission = self.limiter.admit(client_key(request.scope.get("client")))
            if not admission.admitted:
                if admission.first_refusal:  # once per burst: an abusive client must not flood the log
                    LOG.warning("refused token requests from %s: over %d a minute", describe_peer(request.scope),
                                self.limiter.limit)
                metrics.TOKEN_FAILURES.labels("rate_limited").inc()
                return json_error(429, f"too many token requests from this address (at most "
                                       f"{self.limiter.limit} a minute): retry in {admission.retry_after_s} s",
                                  headers={"Retry-After": str(admission.retry_after_s)})
        secret = self._options.token_secret
        if secret is not None and not hmac.compare_digest(_presented_secret(request.headers), secret.encode()):
            LOG.warning("refused a token request from %s: missing or wrong shared secret",
                        describe_peer(request.scope))
            metrics.TOKEN_FAILURES.labels("unauthorized").inc()
            return json_error(401, "this server needs its shared secret: send 'Authorization: Bearer SECRET' "
                                   "or 'X-Lipsync-Secret: SECRET'", headers={"WWW-Authenticate": "Bearer"})
        if self._openai is None:
            metrics.TOKEN_FAILURES.labels("no_key").inc()
            return json_error(503, "no OpenAI API key on the server: set OPENAI_API_KEY where `lipsync serve` runs")
        try:
            minted = self._openai.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": self._options.token_ttl_s},
                session={"type": "realtime", "model": self._options.realtime_model})
        except openai.APIStatusError as exc:
            # only the status: OpenAI's error text can quote part of the key
            LOG.warning("OpenAI refused to mint a client secret (HTTP %d)", exc.status_code)
            metrics.TOKEN_FAILURES.labels("openai_refused").inc()
            return json_error(502, f"OpenAI refused to create a client secret (HTTP {exc.status_code})")
        except openai.APIError as exc:
            LOG.warning("cannot mint a client secret: %s", type(exc).__name__)
            metrics.TOKEN_FAILURES.labels("openai_unreachable").inc()
            return json_error(502, "cannot reach the OpenAI API to create a client secret")
        metrics.TOKEN_MINTS.inc()
        return JSONResponse({"value": minted.value, "expires_at": minted.expires_at},
                            headers={"Cache-Control": "no-store"})
