"""Thin gRPC servicer: protobuf in, a plain request to the engine, protobuf out; errors mapped by one decorator."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from encoder_server.api.interceptors import MalformedRequest
from encoder_server.api.status import status_for
from encoder_server.errors import InvalidRequestError, ServerError, UnauthenticatedError
from encoder_server.model.request import EncodeRequest
from encoder_server.model.upsampler import UpsampleRequest
from encoder_server.observability.calls import Call, CallLog
from encoder_server.serving.engine import send_within
from encoder_server.serving.models import ServedEngines
from shared.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_UPSAMPLE_TEMPERATURE, SERVICE_NAME
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.quotas import CallerQuotas
from shared.tokens import DENIED_MESSAGE, UNKNOWN, current_caller

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Reply]]
Handler = Callable[[Any, Any, grpc.aio.ServicerContext, Call], Awaitable[Reply]]


def maps_errors(method: Handler[Reply]) -> Method[Reply]:
    """Account for the call, refuse unknown callers and callers past their limits, and turn our exceptions into
    their gRPC status.

    Anything else becomes INTERNAL with one log entry. `self._calls` records every call once it ends.
    """

    @functools.wraps(method)
    async def handle(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Reply:
        caller = current_caller.get()
        with self._calls.track(method.__name__, caller or UNKNOWN) as call:
            try:
                if caller is None:
                    raise UnauthenticatedError(DENIED_MESSAGE)
                with self._quotas.admit(caller):
                    if isinstance(request, MalformedRequest):
                        self._quotas.charge(caller, 1)
                        log.warning("malformed %s from %s: %s", request.message_type, context.peer(), request.reason)
                        raise InvalidRequestError(
                            f"the request is not a valid {request.message_type} message: {request.reason}"
                        )
                    return await method(self, request, context, call)
            except ServerError as error:
                code = status_for(error)
                call.status = code.name
                await context.abort(code, str(error))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                call.status = grpc.StatusCode.INTERNAL.name
                log.exception("%s failed", method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "the encoder failed on this request; see the server log")
            raise AssertionError("unreachable: abort raises")

    return handle


def request_from_pb(message: encoder_pb2.EncodeRequest) -> EncodeRequest:
    return EncodeRequest.with_defaults(
        prompts=list(message.prompts),
        max_sequence_length=message.max_sequence_length if message.HasField("max_sequence_length") else None,
        hidden_state_layers=list(message.hidden_state_layers),
    )


def upsample_request_from_pb(message: encoder_pb2.UpsampleRequest) -> UpsampleRequest:
    return UpsampleRequest(
        prompts=tuple(item.prompt for item in message.prompts),
        images=tuple(tuple(item.images) for item in message.prompts),
        temperature=message.temperature if message.HasField("temperature") else DEFAULT_UPSAMPLE_TEMPERATURE,
        max_new_tokens=message.max_new_tokens if message.HasField("max_new_tokens") else DEFAULT_MAX_NEW_TOKENS,
        seed=message.seed if message.HasField("seed") else None,
    )


def model_of(message: Any) -> str | None:
    """The served model a request names; None (unset): the first."""
    return message.model if message.HasField("model") else None


class TextEncoderServicer(encoder_pb2_grpc.TextEncoderServicer):
    """Encode replies are written as the engine's ready-made frames: register Encode with no serializer.

    Each request goes to the engine of the model it names (`ServedEngines.engine_for`)."""

    def __init__(self, engines: ServedEngines, calls: CallLog, quotas: CallerQuotas, send_timeout_s: float) -> None:
        self._engines = engines
        self._calls = calls
        self._quotas = quotas
        self._send_timeout_s = send_timeout_s

    @maps_errors
    async def Encode(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> None:
        encode_request = request_from_pb(request)
        call.prompts = encode_request.prompts
        self._quotas.charge(call.caller, len(encode_request.prompts))
        engine = self._engines.ready_engine_for(model_of(request))
        async with engine.encode(encode_request, call.caller) as result:
            call.cached, call.batch = result.cached, result.batch
            for frame in result.frames():
                await send_within(context.write(frame), self._send_timeout_s)  # gRPC's flow control parks it
                call.sent_bytes += len(frame)

    @maps_errors
    async def Upsample(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.UpsampleRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> encoder_pb2.UpsampleResponse:
        upsample_request = upsample_request_from_pb(request)
        call.prompts = upsample_request.prompts
        self._quotas.charge(call.caller, len(upsample_request.prompts))
        prompts = await self._engines.upsample(upsample_request, model_of(request))
        return encoder_pb2.UpsampleResponse(prompts=prompts)

    @maps_errors
    async def GetInfo(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.GetInfoRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> encoder_pb2.GetInfoResponse:
        return self._engines.info(model_of(request)).to_pb()


def add_servicer_to_server(servicer: TextEncoderServicer, server: grpc.aio.Server) -> None:
    """As the generated `add_TextEncoderServicer_to_server`, but Encode sends bytes as they are."""
    messages = encoder_pb2
    handlers = {
        "Encode": grpc.unary_stream_rpc_method_handler(
            servicer.Encode, request_deserializer=messages.EncodeRequest.FromString, response_serializer=None
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetInfo,
            request_deserializer=messages.GetInfoRequest.FromString,
            response_serializer=messages.GetInfoResponse.SerializeToString,
        ),
        "Upsample": grpc.unary_unary_rpc_method_handler(
            servicer.Upsample,
            request_deserializer=messages.UpsampleRequest.FromString,
            response_serializer=messages.UpsampleResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]
