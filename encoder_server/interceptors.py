"""Server interceptors: bearer-token auth, and parsing requests so a malformed one is a plain error.

Health and reflection stay open so load balancers and grpcurl work without the secret. A request that
is refused for its token is never parsed, and the receive limit (sized from the request limits) bounds
what an unauthenticated caller can make the server hold.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from shared.defaults import SERVICE_NAME

DENIED_MESSAGE = "missing or wrong bearer token; pass the team's token (FLUX2_ENCODER_TOKEN, --token-file or --token)"
PROTECTED_PREFIX = f"/{SERVICE_NAME}/"

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse; the servicer answers it with INVALID_ARGUMENT."""

    message_type: str
    reason: str


def _rebuilt(
    handler: grpc.RpcMethodHandler,
    *,
    behavior: Callable[..., Any] | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour or its deserializer replaced (unary-unary and unary-stream only)."""
    deserializer = request_deserializer or handler.request_deserializer
    serializer = handler.response_serializer
    if handler.response_streaming:
        stream = behavior or handler.unary_stream
        assert stream is not None
        return grpc.unary_stream_rpc_method_handler(stream, deserializer, serializer)
    unary = behavior or handler.unary_unary
    assert unary is not None
    return grpc.unary_unary_rpc_method_handler(unary, deserializer, serializer)


def _ours(handler: grpc.RpcMethodHandler | None, details: grpc.HandlerCallDetails) -> bool:
    return handler is not None and not handler.request_streaming and details.method.startswith(PROTECTED_PREFIX)


class ParseRequestsInterceptor(grpc.aio.ServerInterceptor):
    """Parses our service's requests itself: a DecodeError becomes a `MalformedRequest`, not a logged traceback."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not _ours(handler, handler_call_details) or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        message_type = handler_call_details.method.rsplit("/", 1)[-1] + "Request"

        def tolerant_parse(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as error:
                return MalformedRequest(message_type, str(error).splitlines()[0] if str(error) else "corrupt")

        return _rebuilt(handler, request_deserializer=tolerant_parse)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Encoder calls must carry `authorization: Bearer <token>` (the scheme in any case)."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not _ours(handler, handler_call_details) or self._authorized(handler_call_details.invocation_metadata):
            return handler
        if handler.response_streaming:
            return _rebuilt(handler, behavior=_deny_stream, request_deserializer=_discard)
        return _rebuilt(handler, behavior=_deny, request_deserializer=_discard)

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else bytes(value)
                scheme, _, token = presented.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._expected)
        return False


def _discard(_data: bytes) -> None:
    """A refused caller's request is never parsed."""


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED_MESSAGE)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED_MESSAGE)
    yield  # pragma: no cover - makes this an async generator, as streaming handlers must be
