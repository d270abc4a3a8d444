"""Scripted peers for client tests: a real sync gRPC server on port 0 whose replies a test chooses.

They stand in for servers that misbehave in ways the real one never should (lying headers, corrupt bytes,
hostile error text); everything else about the call (channel, deadlines, streaming) is real gRPC.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import torch

from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.server_info import ServerInfo
from shared.wire import tensor_to_responses
from tests.support.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE

Replies = Iterable[encoder_pb2.EncodeResponse]

# What the tiny snapshot's encoder reports: its hidden size, so (10, 20, 30) give the tiny transformer's 3 x that.
TINY_INFO = ServerInfo(
    model_name="fake-tiny",
    model_path="/fake/tiny",
    hidden_size=TINY_HIDDEN_SIZE,
    num_layers=34,
    max_layer=34,
    default_hidden_state_layers=(10, 20, 30),
    default_max_sequence_length=512,
    max_sequence_length=512,
    dtype="float32",
    device="cpu",
    fingerprint="f" * 64,
    server_version="fake",
    max_prompts_per_request=16,
    max_prompt_chars=20_000,
    max_hidden_state_layers=8,
    max_reply_bytes=2**30,
)

# The same, with upsampling on and the real server's default limits.
TINY_UPSAMPLING_INFO = dataclasses.replace(
    TINY_INFO,
    upsampling_available=True,
    max_upsample_prompts=8,
    max_upsample_images=8,
    max_upsample_image_bytes=8 * 1024 * 1024,
    max_upsample_image_pixels=4096 * 4096,
    max_new_tokens=1024,
)

UpsampleReply = Callable[[encoder_pb2.UpsampleRequest, grpc.ServicerContext], list[str]]


def embeds_for(
    request: encoder_pb2.EncodeRequest, *, width: int = TINY_EMBED_DIM, dtype: torch.dtype = torch.float32
) -> Replies:
    """An honest reply in shape: zeros `[B, length, width]`."""
    length = request.max_sequence_length or 512
    tensor = torch.zeros(len(request.prompts), length, width, dtype=dtype)
    return tensor_to_responses(
        tensor, hidden_state_layers=list(request.hidden_state_layers), max_sequence_length=length
    )


class FakeEncoder(encoder_pb2_grpc.TextEncoderServicer):
    """Answers GetInfo with `info`; each Encode first fails with the next of `failures`, then runs `reply`.

    Upsample answers with `upsample_reply`'s prompts (by default each prompt with " (upsampled)" added) and
    keeps every request in `upsample_requests`.
    """

    def __init__(
        self,
        reply: Callable[[encoder_pb2.EncodeRequest, grpc.ServicerContext], Replies] | None = None,
        *,
        info: ServerInfo = TINY_INFO,
        failures: Iterable[grpc.StatusCode] = (),
        details: str = "scripted failure",
        upsample_reply: UpsampleReply | None = None,
    ) -> None:
        self.reply = reply or (lambda request, _context: embeds_for(request))
        self.info = info
        self.failures = list(failures)
        self.details = details
        self.upsample_reply = upsample_reply or (
            lambda request, _context: [item.prompt + " (upsampled)" for item in request.prompts]
        )
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self.upsample_requests: list[encoder_pb2.UpsampleRequest] = []

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> encoder_pb2.GetInfoResponse:  # noqa: N802
        self.metadata.append({key: str(value) for key, value in context.invocation_metadata()})
        return self.info.to_pb()

    def Encode(self, request: Any, context: grpc.ServicerContext) -> Iterator[encoder_pb2.EncodeResponse]:  # noqa: N802
        self.calls += 1
        if self.failures:
            context.abort(self.failures.pop(0), self.details)
        yield from self.reply(request, context)

    def Upsample(self, request: Any, context: grpc.ServicerContext) -> encoder_pb2.UpsampleResponse:  # noqa: N802
        self.upsample_requests.append(request)
        return encoder_pb2.UpsampleResponse(prompts=self.upsample_reply(request, context))


@contextlib.contextmanager
def fake_server(
    servicer: encoder_pb2_grpc.TextEncoderServicer, options: Sequence[tuple[str, Any]] = ()
) -> Iterator[str]:
    """Serve `servicer` on 127.0.0.1:0 with these gRPC server `options`; yields the target to dial."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=list(options))
    encoder_pb2_grpc.add_TextEncoderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)
