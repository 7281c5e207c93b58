"""The one exception tree of lipsync.

Every failure a user can cause or meet is a `LipsyncError`; the CLI prints `Name: message` and
exits 1. Errors from dependencies (PyAV, OpenCV, soundfile, PortAudio, gRPC) are wrapped where
they are raised, with `raise ... from exc`, so the message says what went wrong in the user's
terms and what to do.
"""


class LipsyncError(Exception):
    """Base of every error lipsync raises on purpose."""


class InputError(LipsyncError):
    """An input file (audio or video) is missing, unreadable or unusable."""


class AudioError(InputError):
    """The audio cannot be read or holds no usable speech samples."""


class VideoError(InputError):
    """The video cannot be read, has no video stream, or no face in it."""


class ModelNotFoundError(LipsyncError):
    """No model video with that name exists in any of the places searched."""


class CacheError(LipsyncError):
    """A model cache cannot be written (a cache that cannot be read is rebuilt instead)."""


class OutputError(LipsyncError):
    """The output file cannot be written."""


class ServiceError(LipsyncError):
    """The lip-sync service cannot be reached or failed during a request."""


class GeneratorError(LipsyncError):
    """A mouth generator (for example a user's ONNX model) cannot be loaded or run."""


class DeviceError(LipsyncError):
    """An audio device or a display is missing or failed."""


class AgentError(LipsyncError):
    """The voice agent (OpenAI Realtime) cannot be used: no key, or the service refused."""


class ServiceFullError(ServiceError):
    """The lip-sync service is serving as many streams as it takes: try another replica or later."""
