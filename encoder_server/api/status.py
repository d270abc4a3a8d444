"""The one place where encoder exceptions become gRPC status codes, and HTTP ones for `/predict`."""

from __future__ import annotations

import grpc

from encoder_server.errors import (
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    NotEnabledError,
    NotReadyError,
    OverloadedError,
    ServerError,
    StalledReaderError,
    UnauthenticatedError,
)

STATUS_FOR_ERROR: dict[type[ServerError], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    NotReadyError: grpc.StatusCode.UNAVAILABLE,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StalledReaderError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    NotEnabledError: grpc.StatusCode.FAILED_PRECONDITION,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(error: ServerError) -> grpc.StatusCode:
    for error_type in type(error).__mro__:
        if error_type in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[error_type]
    return grpc.StatusCode.INTERNAL


# What the same failure is over HTTP; a 503 carries Retry-After (RETRY_AFTER_S), as overload and start-up are brief.
HTTP_STATUS_FOR_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
}
RETRY_AFTER_S = 1


def http_status_for(error: ServerError) -> int:
    return HTTP_STATUS_FOR_CODE.get(status_for(error), 500)
