"""The process's Prometheus metrics (`prometheus_client`), every one named `lipsync_...`.

A base module, so that rpc, web and render count what they do without importing each other. The
metric objects live in this module's own `REGISTRY` (not prometheus_client's default one, which
adds `process_...` and `python_...` families): `serve` answers `/metrics` with `exposition()` of
it plus the state of its own store and capacity (`web.ops`). Counters are per process: tests that
start several servers in one process assert differences, not totals.

Cost: an increment or an observation is a lock and an add (about a microsecond), next to a frame's
milliseconds of work, so the metrics stay on.

    lipsync_streams_total{api, call}          calls that took a stream slot (RenderClip, StreamAudio, StreamInference)
    lipsync_streams_refused_total{reason}     calls refused a slot: "full" or "draining"
    lipsync_streams_open                      slots held now, across the process's servers
    lipsync_frames_total{call}                mouth frames sent
    lipsync_frame_seconds{call}               service time of one frame: engine work and its JPEG (histogram)
    lipsync_render_jobs_total{outcome}        `render` jobs: "ok" or "failed"
    lipsync_token_mints_total                 OpenAI client secrets minted
    lipsync_token_mint_failures_total{reason} token requests refused or failed
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

# a frame of the sample avatar takes ~7 ms of CPU (`rpc.limits.STREAM_COST_CORES`); a real-time
# stream at 25 fps must stay under 40 ms: buckets around both, up to a starved server's second
FRAME_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.1, 0.25, 1.0)

STREAMS = Counter("lipsync_streams", "Calls that took a stream slot.", ["api", "call"], registry=REGISTRY)
STREAMS_REFUSED = Counter("lipsync_streams_refused", "Calls refused a stream slot (full or draining).",
                          ["reason"], registry=REGISTRY)
STREAMS_OPEN = Gauge("lipsync_streams_open", "Stream slots held now.", registry=REGISTRY)
FRAMES = Counter("lipsync_frames", "Mouth frames sent.", ["call"], registry=REGISTRY)
FRAME_SECONDS = Histogram("lipsync_frame_seconds", "Service time of one frame: engine work and its JPEG encoding.",
                          ["call"], buckets=FRAME_SECONDS_BUCKETS, registry=REGISTRY)
RENDER_JOBS = Counter("lipsync_render_jobs", "Render jobs (lipsync render), by outcome: ok or failed.",
                      ["outcome"], registry=REGISTRY)
TOKEN_MINTS = Counter("lipsync_token_mints", "OpenAI Realtime client secrets minted.", registry=REGISTRY)
TOKEN_FAILURES = Counter("lipsync_token_mint_failures", "Token requests refused or failed, by reason "
                         "(rate_limited, unauthorized, no_key, openai_refused, openai_unreachable).",
                         ["reason"], registry=REGISTRY)

REFUSED_FULL = "full"
REFUSED_DRAINING = "draining"
EXPOSITION_CONTENT_TYPE = CONTENT_TYPE_LATEST  # "text/plain; version=...; charset=utf-8", as Prometheus reads it


def exposition(*registries: CollectorRegistry) -> bytes:
    """The Prometheus text format of REGISTRY followed by `registries` (whose names must not repeat its)."""
    return b"".join(generate_latest(r) for r in (REGISTRY, *registries))
