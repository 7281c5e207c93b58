"""Defaults a user sees in `--help`, shared by the CLI and the modules that use them.

Kept apart so the CLI can show them without importing the HTTP stack or the OpenAI SDK.
"""

DEFAULT_HOST = "127.0.0.1"  # serve binds to loopback unless told otherwise
DEFAULT_HTTP_PORT = 3000
DEFAULT_GRPC_PORT = 50051
DEFAULT_REALTIME_MODEL = "gpt-realtime"  # the OpenAI Realtime model of `live --agent openai` and `/api/token`
DEFAULT_VOICE = "alloy"
DEFAULT_DRAIN_S = 20.0  # serve on SIGTERM: running streams get this long to finish (Kubernetes waits 30 s before SIGKILL)
# OpenCV's own thread pool on top of our threads (render's compose workers, the service's streams,
# x264) spends CPU waiting for work: one OpenCV thread per caller cut a 1080x1920 render frame from 58
# to 52 ms of CPU (render sets it)
OPENCV_THREADS = 1
