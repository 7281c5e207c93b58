from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_TYPE_UNSPECIFIED: _ClassVar[SampleType]
    PCM_S16LE: _ClassVar[SampleType]
    FLOAT32LE: _ClassVar[SampleType]
SAMPLE_TYPE_UNSPECIFIED: SampleType
PCM_S16LE: SampleType
FLOAT32LE: SampleType

class AudioFormat(_message.Message):
    __slots__ = ("sample_rate_hz", "channels", "sample_type")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    channels: int
    sample_type: SampleType
    def __init__(self, sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., sample_type: _Optional[_Union[SampleType, str]] = ...) -> None: ...

class ClipRequest(_message.Message):
    __slots__ = ("model", "format", "audio", "first_frame")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    model: str
    format: AudioFormat
    audio: bytes
    first_frame: int
    def __init__(self, model: _Optional[str] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., audio: _Optional[bytes] = ..., first_frame: _Optional[int] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("model", "format", "first_frame", "offline")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    model: str
    format: AudioFormat
    first_frame: int
    offline: bool
    def __init__(self, model: _Optional[str] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., first_frame: _Optional[int] = ..., offline: _Optional[bool] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("start", "audio", "captured_at_s")
    START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_S_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    audio: bytes
    captured_at_s: float
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., audio: _Optional[bytes] = ..., captured_at_s: _Optional[float] = ...) -> None: ...

class MouthFrame(_message.Message):
    __slots__ = ("index", "prediction_data", "bounds", "speech", "model_frame", "mouth_open", "shape", "captured_at_s")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DATA_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FRAME_FIELD_NUMBER: _ClassVar[int]
    MOUTH_OPEN_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_S_FIELD_NUMBER: _ClassVar[int]
    index: int
    prediction_data: bytes
    bounds: _containers.RepeatedScalarFieldContainer[float]
    speech: bool
    model_frame: int
    mouth_open: float
    shape: str
    captured_at_s: float
    def __init__(self, index: _Optional[int] = ..., prediction_data: _Optional[bytes] = ..., bounds: _Optional[_Iterable[float]] = ..., speech: _Optional[bool] = ..., model_frame: _Optional[int] = ..., mouth_open: _Optional[float] = ..., shape: _Optional[str] = ..., captured_at_s: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "width", "height", "fps", "frames", "prepared")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    name: str
    width: int
    height: int
    fps: float
    frames: int
    prepared: bool
    def __init__(self, name: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., frames: _Optional[int] = ..., prepared: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
