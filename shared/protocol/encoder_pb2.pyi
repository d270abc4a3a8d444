from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpsamplePrompt(_message.Message):
    __slots__ = ("prompt", "images")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, prompt: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class UpsampleRequest(_message.Message):
    __slots__ = ("prompts", "temperature", "max_new_tokens", "seed", "model")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[UpsamplePrompt]
    temperature: float
    max_new_tokens: int
    seed: int
    model: str
    def __init__(self, prompts: _Optional[_Iterable[_Union[UpsamplePrompt, _Mapping]]] = ..., temperature: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class UpsampleResponse(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("prompts", "max_sequence_length", "hidden_state_layers", "model")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    max_sequence_length: int
    hidden_state_layers: _containers.RepeatedScalarFieldContainer[int]
    model: str
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., max_sequence_length: _Optional[int] = ..., hidden_state_layers: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ...) -> None: ...

class TensorHeader(_message.Message):
    __slots__ = ("dtype", "shape", "byte_length", "hidden_state_layers", "max_sequence_length", "row_crc32c")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BYTE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ROW_CRC32C_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    byte_length: int
    hidden_state_layers: _containers.RepeatedScalarFieldContainer[int]
    max_sequence_length: int
    row_crc32c: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., byte_length: _Optional[int] = ..., hidden_state_layers: _Optional[_Iterable[int]] = ..., max_sequence_length: _Optional[int] = ..., row_crc32c: _Optional[_Iterable[int]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TensorHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[TensorHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "family", "pipeline", "hidden_size", "default_hidden_state_layers", "fingerprint", "quantization", "upsampling_available")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HIDDEN_STATE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    UPSAMPLING_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    pipeline: str
    hidden_size: int
    default_hidden_state_layers: _containers.RepeatedScalarFieldContainer[int]
    fingerprint: str
    quantization: str
    upsampling_available: bool
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., pipeline: _Optional[str] = ..., hidden_size: _Optional[int] = ..., default_hidden_state_layers: _Optional[_Iterable[int]] = ..., fingerprint: _Optional[str] = ..., quantization: _Optional[str] = ..., upsampling_available: _Optional[bool] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("model_name", "model_path", "hidden_size", "num_layers", "max_layer", "default_hidden_state_layers", "default_max_sequence_length", "max_sequence_length", "dtype", "device", "fingerprint", "server_version", "max_prompts_per_request", "max_prompt_chars", "max_hidden_state_layers", "max_reply_bytes", "quantization", "weight_bytes", "upsampling_available", "max_upsample_prompts", "max_upsample_images", "max_upsample_image_bytes", "max_upsample_image_pixels", "max_new_tokens", "family", "pipeline", "models")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_LAYER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HIDDEN_STATE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_HIDDEN_STATE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPSAMPLING_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_UPSAMPLE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_UPSAMPLE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_UPSAMPLE_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_UPSAMPLE_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_path: str
    hidden_size: int
    num_layers: int
    max_layer: int
    default_hidden_state_layers: _containers.RepeatedScalarFieldContainer[int]
    default_max_sequence_length: int
    max_sequence_length: int
    dtype: str
    device: str
    fingerprint: str
    server_version: str
    max_prompts_per_request: int
    max_prompt_chars: int
    max_hidden_state_layers: int
    max_reply_bytes: int
    quantization: str
    weight_bytes: int
    upsampling_available: bool
    max_upsample_prompts: int
    max_upsample_images: int
    max_upsample_image_bytes: int
    max_upsample_image_pixels: int
    max_new_tokens: int
    family: str
    pipeline: str
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    def __init__(self, model_name: _Optional[str] = ..., model_path: _Optional[str] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., max_layer: _Optional[int] = ..., default_hidden_state_layers: _Optional[_Iterable[int]] = ..., default_max_sequence_length: _Optional[int] = ..., max_sequence_length: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., fingerprint: _Optional[str] = ..., server_version: _Optional[str] = ..., max_prompts_per_request: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., max_hidden_state_layers: _Optional[int] = ..., max_reply_bytes: _Optional[int] = ..., quantization: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., upsampling_available: _Optional[bool] = ..., max_upsample_prompts: _Optional[int] = ..., max_upsample_images: _Optional[int] = ..., max_upsample_image_bytes: _Optional[int] = ..., max_upsample_image_pixels: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., family: _Optional[str] = ..., pipeline: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ...) -> None: ...
