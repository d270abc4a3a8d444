"""The one place where encoder exceptions become gRPC status codes."""

from __future__ import annotations

import grpc

from encoder_server.errors import (
    EncoderError,
    InvalidRequestError,
    ModelLoadError,
    NotEnabledError,
    NotReadyError,
    OverloadedError,
    StalledReaderError,
)

STATUS_FOR_ERROR: dict[type[EncoderError], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    NotReadyError: grpc.StatusCode.UNAVAILABLE,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StalledReaderError: grpc.StatusCode.DEADLINE_EXCEEDED,
    NotEnabledError: grpc.StatusCode.FAILED_PRECONDITION,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(error: EncoderError) -> grpc.StatusCode:
    for error_type in type(error).__mro__:
        if error_type in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[error_type]
    return grpc.StatusCode.INTERNAL
