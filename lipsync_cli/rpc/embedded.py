"""The lip-sync service run inside this process: what `lipsync render` uses when no `--server` is
given. Apart from `client.py`, so the client never imports the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lipsync_cli.core.generator import MouthGenerator
from lipsync_cli.media.store import ModelStore
from lipsync_cli.rpc.service import create_server


@contextmanager
def embedded_service(store: ModelStore, generator: MouthGenerator | None = None) -> Iterator[str]:
    """Run the lip-sync service in this process on a free loopback port; yields its target ("127.0.0.1:PORT")."""
    # one render: its caller starts the phone recogniser it needs (render/pipeline.py), none for a next one
    server, port = create_server("127.0.0.1:0", store=store, generator=generator, warm_recogniser=False)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
