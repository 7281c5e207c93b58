"""The standard gRPC health service of a lip-sync server, following its stream capacity.

What a load balancer or `grpc_health_probe` reads: the served names (`lipsync.v1.LipSync`, the
original API's) are SERVING while the capacity takes new streams and NOT_SERVING while it does not
(every slot busy, or draining on SIGTERM); the server as a whole ("") is NOT_SERVING only while
draining, so a full but healthy replica is not taken for a dead one. Readiness over HTTP
(`/readyz`, `web.ops`) reads the same capacity.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2

from lipsync_cli.rpc.capacity import Capacity


def following_capacity(names: Iterable[str], capacity: Capacity) -> health.HealthServicer:
    """A health servicer for `names` that follows `capacity` from now on (see the module docstring)."""
    names = list(names)
    servicer = health.HealthServicer()
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    lock = threading.Lock()  # two changes at once must not leave the older state set last

    def update() -> None:
        with lock:
            servicer.set("", not_serving if capacity.draining else serving)
            status = serving if capacity.accepting() else not_serving
            for name in names:
                servicer.set(name, status)

    update()
    capacity.on_change(update)
    return servicer
