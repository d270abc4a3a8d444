"""Thin gRPC servicer: protobuf in, plain request to the encoder state, protobuf out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import torch

from encoder_server import __version__
from encoder_server.batcher import DynamicBatcher
from encoder_server.errors import EncoderError, NotReadyError
from encoder_server.prompt_encoder import PromptEncoder
from encoder_server.request import EncodeRequest, validate_request
from encoder_server.status import status_for
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import TensorMeta

log = logging.getLogger(__name__)

WirePayload = tuple[TensorMeta, list[bytes]]


@dataclass
class ReadyEncoder:
    """What serving needs once the model has loaded."""

    encoder: PromptEncoder
    batcher: DynamicBatcher[torch.Tensor, WirePayload]
    max_prompts_per_request: int


class EncoderState:
    """Holds the encoder once it is ready; requests before that fail with UNAVAILABLE."""

    def __init__(self) -> None:
        self._ready: ReadyEncoder | None = None

    def set_ready(self, ready: ReadyEncoder) -> None:
        self._ready = ready

    def get(self) -> ReadyEncoder:
        if self._ready is None:
            raise NotReadyError("the encoder model is still loading; retry when health reports SERVING")
        return self._ready

    @property
    def ready(self) -> ReadyEncoder | None:
        return self._ready


def run_batch_on_host(encoder: PromptEncoder, requests: list[EncodeRequest]) -> list[torch.Tensor]:
    """Forward-thread work for one batch: the forward pass, then each result copied to host memory."""
    return [embeds.to("cpu") for embeds in encoder.encode_many(requests)]


def request_from_pb(message: encoder_pb2.EncodeRequest) -> EncodeRequest:
    return EncodeRequest.with_defaults(
        prompts=list(message.prompts),
        max_sequence_length=message.max_sequence_length if message.HasField("max_sequence_length") else None,
        hidden_state_layers=list(message.hidden_state_layers),
    )


def header_to_pb(meta: TensorMeta, request: EncodeRequest) -> encoder_pb2.TensorHeader:
    return encoder_pb2.TensorHeader(
        dtype=meta.dtype,
        shape=list(meta.shape),
        byte_length=meta.byte_length,
        crc32=meta.crc32,
        hidden_state_layers=list(request.hidden_state_layers),
        max_sequence_length=request.max_sequence_length,
    )


class TextEncoderServicer(encoder_pb2_grpc.TextEncoderServicer):
    def __init__(self, state: EncoderState) -> None:
        self._state = state

    async def Encode(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[encoder_pb2.EncodeResponse]:
        try:
            ready = self._state.get()
            encode_request = request_from_pb(request)
            validate_request(encode_request, ready.encoder.bounds(ready.max_prompts_per_request))
            meta, chunks = await ready.batcher.submit(encode_request)
        except EncoderError as error:
            await context.abort(status_for(error), str(error))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Encode failed")
            await context.abort(grpc.StatusCode.INTERNAL, "the encoder failed on this request; see the server log")
        yield encoder_pb2.EncodeResponse(header=header_to_pb(meta, encode_request))
        for chunk in chunks:
            yield encoder_pb2.EncodeResponse(chunk=chunk)

    async def GetInfo(  # noqa: N802 - gRPC method name
        self, request: encoder_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.GetInfoResponse:
        try:
            ready = self._state.get()
        except EncoderError as error:
            await context.abort(status_for(error), str(error))
        info = ready.encoder.info
        return encoder_pb2.GetInfoResponse(
            model_name=info.model_name,
            model_path=info.model_path,
            hidden_size=info.hidden_size,
            num_layers=info.num_layers,
            max_layer=info.max_layer,
            default_hidden_state_layers=list(DEFAULT_HIDDEN_STATE_LAYERS),
            default_max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH,
            max_sequence_length=ready.encoder.limits.max_sequence_length,
            dtype=info.dtype,
            device=info.device,
            fingerprint=info.fingerprint,
            server_version=__version__,
            max_prompts_per_request=ready.max_prompts_per_request,
            max_prompt_chars=ready.encoder.limits.max_prompt_chars,
        )
