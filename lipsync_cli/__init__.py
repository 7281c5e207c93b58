"""lipsync: make an avatar video speak.

The package is a core library (audio, video, face tracking, model cache, mouth driver and
generator, compositor, gRPC service, HTTP server, live session) under a thin Typer CLI
(`lipsync_cli.cli`). The core never prints; it reports progress through callbacks and failures
through `lipsync_cli.errors.LipsyncError`.
"""

__version__ = "0.1.0"
