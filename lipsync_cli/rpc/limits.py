"""Limits the lip-sync gRPC server and its client share."""

from __future__ import annotations

# a whole clip travels in one message: 128 MiB is about 11 minutes of 48 kHz stereo PCM16
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
