"""Limits the lip-sync gRPC server and its client share: message sizes, stream capacity, idle time.

Sizes (also stated in `proto/lipsync.proto`):
- every message, either way: at most MAX_MESSAGE_BYTES (16 MiB). A larger one is refused by gRPC
  before it is read whole (RESOURCE_EXHAUSTED, "larger than max"), so one huge request cannot take
  the server's memory. A RenderClip request of 16 MiB holds about 8.7 minutes of 16 kHz mono PCM16
  (about 1.5 minutes of 48 kHz stereo); `LipSyncClient.render_clip` streams anything longer
  through StreamAudio (`offline`), so a render of any length never needs a bigger message.
- a StreamAudio chunk the client sends: at most STREAM_CHUNK_SAMPLES of audio.

Capacity: at most `max_streams` RenderClip/StreamAudio/StreamInference calls at once; the rest are
refused at once (RESOURCE_EXHAUSTED, FULL_MESSAGE). The default, `default_max_streams()`, is

    max(1, floor(cores * CPU_HEADROOM / STREAM_COST_CORES))

where STREAM_COST_CORES is what one real-time 25 fps live stream (driver, own generator, JPEG,
gRPC, in one Python process) really takes: `bench/soak.py` on the quiet 2-core development machine
(2026-12-01, the sample avatar) ran 5 streams for 10 s with no late frame, but held for 10 minutes
17% of their frames came late (a backlog builds slowly); 4 held (see docs/benchmarks.md). So 1.5
cores of streams hold 4: about 0.35 of a core each (the engine alone measures 7.2 ms of CPU per
frame, 0.18; the rest is gRPC, the threads and the interpreter lock). Run `bench/soak.py` on your
server and set `--max-streams` from it.
"""

from __future__ import annotations

import math
import os

MIB = 1024 * 1024
# the largest message either side sends or accepts: a RenderClip request of ~8.7 min of 16 kHz
# mono PCM16; longer clips are streamed (RenderClip's 128 MiB let one request take ~1 GiB decoded)
MAX_MESSAGE_BYTES = 16 * MIB
REQUEST_OVERHEAD_BYTES = 1024  # model name, format and framing around a message's audio
# audio per StreamAudio message when the client streams a long clip: 10 s of 16 kHz mono float32 (640 KB)
STREAM_CHUNK_SAMPLES = 160_000

STREAM_COST_CORES = 0.35  # one real-time 25 fps live stream, in cores (measured by bench/soak.py, see above)
CPU_HEADROOM = 0.75  # share of the cores streams may use: the rest answers health, HTTP, the OS
# threads beyond the stream limit, so health, reflection and ListModels always find one free
SPARE_WORKERS = 8

DEFAULT_STREAM_IDLE_S = 30.0  # a stream that sends nothing for this long is closed (live sends silence too)

FULL_MESSAGE_PREFIX = "the lip-sync service is full"
STALLED_MESSAGE_PREFIX = "the stream sent nothing"  # how the server's closing of a stalled stream begins
# how a draining server (SIGTERM: finishing its streams, taking no new ones) refuses a call, and how
# it stops a stream still running at the drain deadline; both UNAVAILABLE: a client goes elsewhere
DRAINING_MESSAGE_PREFIX = "the lip-sync service is draining"


def default_max_streams(cores: int | None = None) -> int:
    """Streams one server takes at once by default: the cores' share for streams over a stream's cost."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, math.floor(cores * CPU_HEADROOM / STREAM_COST_CORES))


def full_message(in_use: int, limit: int) -> str:
    """What a refused call is told when every stream slot is taken."""
    return f"{FULL_MESSAGE_PREFIX}: {in_use} of {limit} streams busy; try another replica or later"


def draining_message(*, stopped: bool = False) -> str:
    """What a draining server answers: a new call (refused) or a running stream stopped at the deadline."""
    what = "this stream was stopped at its drain deadline" if stopped else "it takes no new streams"
    return f"{DRAINING_MESSAGE_PREFIX} (shutting down): {what}; try another replica"


def stalled_message(idle_s: float) -> str:
    """What a stream that sent nothing for idle_s is told as it is closed."""
    return (f"{STALLED_MESSAGE_PREFIX} for {idle_s:g} s and was closed (a live client sends audio, silence "
            "included, all along)")
