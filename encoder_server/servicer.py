"""Thin gRPC servicer: protobuf in, a plain request to the engine, protobuf out; errors mapped by one decorator."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from encoder_server.engine import EncoderEngine
from encoder_server.errors import EncoderError, InvalidRequestError, StalledReaderError
from encoder_server.interceptors import MalformedRequest
from encoder_server.request import EncodeRequest
from encoder_server.status import status_for
from encoder_server.upsampler import UpsampleRequest
from shared.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_UPSAMPLE_TEMPERATURE
from shared.protocol import encoder_pb2, encoder_pb2_grpc

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Reply]]


def maps_errors(method: Method[Reply]) -> Method[Reply]:
    """Turn our exceptions into their gRPC status, and anything else into INTERNAL with one log entry."""

    @functools.wraps(method)
    async def handle(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Reply:
        try:
            if isinstance(request, MalformedRequest):
                log.warning("malformed %s from %s: %s", request.message_type, context.peer(), request.reason)
                raise InvalidRequestError(
                    f"the request is not a valid {request.message_type} message: {request.reason}"
                )
            return await method(self, request, context)
        except EncoderError as error:
            await context.abort(status_for(error), str(error))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
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


class TextEncoderServicer(encoder_pb2_grpc.TextEncoderServicer):
    def __init__(self, engine: EncoderEngine, send_timeout_s: float) -> None:
        self._engine = engine
        self._send_timeout_s = send_timeout_s

    @maps_errors
    async def Encode(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        async with self._engine.encode(request_from_pb(request)) as replies:
            for reply in replies:
                try:
                    # gRPC's flow control parks a write while the reader is not reading; past the timeout the
                    # reply is dropped so a stalled reader cannot pin it.
                    await asyncio.wait_for(context.write(reply), self._send_timeout_s)
                except TimeoutError:
                    raise StalledReaderError(
                        f"the reply could not be sent for {self._send_timeout_s:g} s (the client stopped reading); "
                        "it was dropped"
                    ) from None

    @maps_errors
    async def Upsample(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.UpsampleRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.UpsampleResponse:
        prompts = await self._engine.upsample(upsample_request_from_pb(request))
        return encoder_pb2.UpsampleResponse(prompts=prompts)

    @maps_errors
    async def GetInfo(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.GetInfoResponse:
        return self._engine.info().to_pb()
