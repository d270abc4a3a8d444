"""Exceptions the encoder raises; `encoder_server.api.status` maps each to one gRPC status code.

ServerError
├── InvalidRequestError   the request breaks a documented limit, or is not a valid message (INVALID_ARGUMENT)
├── NotReadyError         the model is still loading or the server is stopping (UNAVAILABLE)
├── OverloadedError       the queue or the reply memory is full; retry later (RESOURCE_EXHAUSTED)
├── StalledReaderError    the caller stopped reading its reply, which was dropped (DEADLINE_EXCEEDED)
├── UnauthenticatedError  no token, or one the tokens file does not hold (UNAUTHENTICATED)
├── NotEnabledError       the server was not started with what this call needs (FAILED_PRECONDITION)
├── ModelNotFoundError    the request names a model the server does not serve (NOT_FOUND)
└── ModelLoadError        the snapshot cannot be loaded (raised at start-up, never to a client)
"""

from __future__ import annotations


class ServerError(Exception):
    """Base class; the message says what happened and what to do about it."""


class InvalidRequestError(ServerError):
    pass


class NotReadyError(ServerError):
    pass


class OverloadedError(ServerError):
    pass


class StalledReaderError(ServerError):
    pass


class UnauthenticatedError(ServerError):
    pass


class NotEnabledError(ServerError):
    pass


class ModelNotFoundError(ServerError):
    pass


class ModelLoadError(ServerError):
    pass
