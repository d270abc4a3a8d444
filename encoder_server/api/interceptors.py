"""Server interceptors: bearer-token auth, and parsing requests so a malformed one is a plain error.

Health and reflection stay open so load balancers and grpcurl work without the secret. A call refused for its
token is answered as soon as its headers arrive, before its request message is read: gRPC's receive limit is
one number for every method (Upsample's, with reference images, when upsampling is on), so an unauthenticated
caller must not get to send that much. Each method's requests are also held to that method's own size (Encode's
and GetInfo's are small) before they are parsed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from shared.defaults import SERVICE_NAME
from shared.tokens import TokenRegistry, current_caller

PROTECTED_PREFIX = f"/{SERVICE_NAME}/"

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse, or that is larger than its method takes; the servicer
    answers it with INVALID_ARGUMENT."""

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
    """Parses our service's requests itself: a DecodeError becomes a `MalformedRequest`, not a logged traceback,
    and so does a request over `max_request_bytes[method]` (unlisted methods: the receive limit only)."""

    def __init__(self, max_request_bytes: dict[str, int] | None = None) -> None:
        self._max_request_bytes = max_request_bytes or {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not _ours(handler, handler_call_details) or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = handler_call_details.method.rsplit("/", 1)[-1]
        message_type = method + "Request"
        limit = self._max_request_bytes.get(method)

        def tolerant_parse(data: bytes) -> Any:
            if limit is not None and len(data) > limit:
                return MalformedRequest(
                    message_type, f"it is {len(data):,} bytes and {method} takes at most {limit:,} (the request limits)"
                )
            try:
                return parse(data)
            except DecodeError as error:
                return MalformedRequest(message_type, str(error).splitlines()[0] if str(error) else "corrupt")

        return _rebuilt(handler, request_deserializer=tolerant_parse)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Encoder calls must carry `authorization: Bearer <token>` (the scheme in any case) naming a known caller.

    The handler runs with `current_caller` set to the caller's name, or to None for a refused call, which
    the servicer answers with UNAUTHENTICATED (so refusals are logged and counted like any other call).
    """

    def __init__(self, tokens: TokenRegistry) -> None:
        self._tokens = tokens

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not _ours(handler, handler_call_details):
            return handler
        name = self._tokens.identify(_authorization(handler_call_details.invocation_metadata))
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
        assert behavior is not None
        if name is None:
            return _refused_before_reading(behavior, handler)
        return _rebuilt(handler, behavior=_as_caller(behavior, name))


def _authorization(metadata: Any) -> str | bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value
    return None


def _as_caller(behavior: Callable[..., Any], name: str | None) -> Callable[..., Any]:
    async def run_as_caller(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = current_caller.set(name)
        try:
            return await behavior(request, context)
        finally:
            current_caller.reset(token)

    return run_as_caller


def _refused_before_reading(behavior: Callable[..., Any], handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A request-streaming handler (the same on the wire as a unary one) whose behaviour never reads the request:
    gRPC answers as soon as the call starts and stops receiving, instead of first taking in the whole message.
    The behaviour still runs, with no request and `current_caller` None, so the refusal is logged and counted."""
    refuse = _as_caller(behavior, None)

    async def without_request(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await refuse(None, context)

    serializer = handler.response_serializer
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(without_request, _discard, serializer)
    return grpc.stream_unary_rpc_method_handler(without_request, _discard, serializer)


def _discard(_data: bytes) -> None:
    """A refused caller's request is never parsed."""
