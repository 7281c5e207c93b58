"""What the HTTP side of `lipsync serve` needs to know: CORS origins and how the token endpoint is guarded.

No HTTP stack is imported here, so the CLI can show these defaults in `--help` cheaply.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from lipsync_cli.defaults import DEFAULT_REALTIME_MODEL
from lipsync_cli.errors import LipsyncError

# where a page POSTs its WebRTC SDP offer with the minted secret (OpenAI's "Realtime API with WebRTC")
DEFAULT_REALTIME_CALLS_URL = "https://api.openai.com/v1/realtime/calls"
DEFAULT_TOKEN_TTL_S = 600
# the range OpenAI accepts for `expires_after.seconds`
MIN_TOKEN_TTL_S = 10
MAX_TOKEN_TTL_S = 7200
# a page mints one secret per conversation; 30 a minute is far above that and far below abuse
DEFAULT_TOKEN_RATE_PER_MIN = 30
# the limiter keeps one timestamp per admitted request per client, so memory grows with the rate;
# beyond this a limit protects little, and 0 turns it off
MAX_TOKEN_RATE_PER_MIN = 1000
_ORIGIN_RE = re.compile(r"^https?://[^/\s]+$")
_URL_RE = re.compile(r"^https?://[^/\s]+(/\S*)?$")


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass(frozen=True)
class HttpOptions:
    """The HTTP app's options; validated here, once. Models and caches come with the ModelStore."""

    # origins allowed to call the API from other sites' pages ("https://app.example"); empty: no CORS
    allowed_origins: tuple[str, ...] = ()
    # callers of the token endpoint must present it; None: anyone who can reach the server may ask
    token_secret: str | None = field(default_factory=lambda: _env("LIPSYNC_TOKEN_SECRET"), repr=False)
    # the key client secrets are minted with; None: the token endpoint answers 503
    openai_api_key: str | None = field(default_factory=lambda: _env("OPENAI_API_KEY"), repr=False)
    # the Realtime model the minted session is for
    realtime_model: str = DEFAULT_REALTIME_MODEL
    # the Realtime calls endpoint the page connects to (told to it by GET /api/config); another for tests
    realtime_calls_url: str = DEFAULT_REALTIME_CALLS_URL
    # how long a minted client secret stays valid
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    # token requests one client (peer IP) may make in any 60 s; 0: no limit
    token_rate_per_min: int = DEFAULT_TOKEN_RATE_PER_MIN

    def __post_init__(self) -> None:
        for origin in self.allowed_origins:
            if origin != "*" and not _ORIGIN_RE.match(origin):
                raise LipsyncError(f"allowed origin {origin!r} must look like https://host[:port], "
                                   "with no path and no trailing slash")
        if not _URL_RE.match(self.realtime_calls_url):
            raise LipsyncError(f"the Realtime calls URL {self.realtime_calls_url!r} must be an http(s) URL")
        if not MIN_TOKEN_TTL_S <= self.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise LipsyncError(f"the token lifetime must be {MIN_TOKEN_TTL_S} to {MAX_TOKEN_TTL_S} s, "
                               f"not {self.token_ttl_s}")
        if self.token_secret is not None and not self.token_secret.strip():
            raise LipsyncError("the token secret must not be blank")
        if not 0 <= self.token_rate_per_min <= MAX_TOKEN_RATE_PER_MIN:
            raise LipsyncError(f"the token rate must be 0 (no limit) to {MAX_TOKEN_RATE_PER_MIN} a minute, "
                               f"not {self.token_rate_per_min}")
