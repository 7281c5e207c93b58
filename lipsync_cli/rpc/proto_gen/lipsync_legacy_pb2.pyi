from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferenceRequest(_message.Message):
    __slots__ = ("model_name", "frame_id", "audio_override")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    frame_id: int
    audio_override: str
    def __init__(self, model_name: _Optional[str] = ..., frame_id: _Optional[int] = ..., audio_override: _Optional[str] = ...) -> None: ...

class InferenceResponse(_message.Message):
    __slots__ = ("success", "prediction_data", "bounds", "processing_time_ms", "model_name", "frame_id", "auto_loaded", "prediction_shape", "error")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DATA_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    AUTO_LOADED_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    success: bool
    prediction_data: bytes
    bounds: _containers.RepeatedScalarFieldContainer[float]
    processing_time_ms: int
    model_name: str
    frame_id: int
    auto_loaded: bool
    prediction_shape: str
    error: str
    def __init__(self, success: _Optional[bool] = ..., prediction_data: _Optional[bytes] = ..., bounds: _Optional[_Iterable[float]] = ..., processing_time_ms: _Optional[int] = ..., model_name: _Optional[str] = ..., frame_id: _Optional[int] = ..., auto_loaded: _Optional[bool] = ..., prediction_shape: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class BatchInferenceRequest(_message.Message):
    __slots__ = ("model_name", "frame_ids", "audio_override")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_IDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    frame_ids: _containers.RepeatedScalarFieldContainer[int]
    audio_override: str
    def __init__(self, model_name: _Optional[str] = ..., frame_ids: _Optional[_Iterable[int]] = ..., audio_override: _Optional[str] = ...) -> None: ...

class BatchInferenceResponse(_message.Message):
    __slots__ = ("responses", "total_processing_time_ms")
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PROCESSING_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[InferenceResponse]
    total_processing_time_ms: int
    def __init__(self, responses: _Optional[_Iterable[_Union[InferenceResponse, _Mapping]]] = ..., total_processing_time_ms: _Optional[int] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model_name", "package_path", "audio_override")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    package_path: str
    audio_override: str
    def __init__(self, model_name: _Optional[str] = ..., package_path: _Optional[str] = ..., audio_override: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("success", "model_name", "message", "initialization_time_ms", "error")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZATION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    success: bool
    model_name: str
    message: str
    initialization_time_ms: int
    error: str
    def __init__(self, success: _Optional[bool] = ..., model_name: _Optional[str] = ..., message: _Optional[str] = ..., initialization_time_ms: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
