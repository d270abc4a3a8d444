"""Run real encoder servers in a background event loop, and call them with plain gRPC stubs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch

from encoder_server.config import BatchingConfig, ModelConfig, RequestLimits, ServerConfig
from encoder_server.prompt_encoder import PromptEncoder
from encoder_server.server import EncoderServer, create_server
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import TensorMeta, decode_tensor


@dataclass
class RunningServer:
    """A server running on its own event-loop thread; `target` is what clients dial."""

    handle: EncoderServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.target)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.handle.port}"

    @property
    def stub(self) -> encoder_pb2_grpc.TextEncoderStub:
        return encoder_pb2_grpc.TextEncoderStub(self.channel)

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_ready(self, timeout: float = 60) -> PromptEncoder:
        return self.run(self.handle.wait_ready(), timeout).encoder

    def encode(self, prompts: Sequence[str], **fields: Any) -> torch.Tensor:
        return encode_via(self.stub, prompts, **fields)


def encode_via(stub: encoder_pb2_grpc.TextEncoderStub, prompts: Sequence[str], **fields: Any) -> torch.Tensor:
    """Call Encode and rebuild the tensor from the header and chunks, as any client would."""
    replies = list(stub.Encode(encoder_pb2.EncodeRequest(prompts=list(prompts), **fields), timeout=60))
    header = replies[0].header
    meta = TensorMeta(header.dtype, tuple(header.shape), header.byte_length, header.crc32)
    return decode_tensor(meta, [reply.chunk for reply in replies[1:]])


def server_config(snapshot: Path, **overrides: Any) -> ServerConfig:
    model = ModelConfig(model_path=snapshot, device="cpu", max_layer=overrides.pop("max_layer", None))
    batching = BatchingConfig(
        **{k: overrides.pop(k) for k in list(overrides) if k in BatchingConfig.__dataclass_fields__}
    )
    limits = RequestLimits(**{k: overrides.pop(k) for k in list(overrides) if k in RequestLimits.__dataclass_fields__})
    return ServerConfig(
        model=model, host="127.0.0.1", port=overrides.pop("port", 0), batching=batching, limits=limits, **overrides
    )


@contextlib.contextmanager
def start_server(
    snapshot: Path,
    load_encoder: Callable[[], PromptEncoder] | None = None,
    wait: bool = True,
    **overrides: Any,
) -> Iterator[RunningServer]:
    """Start a real server on 127.0.0.1:0 in a background loop; stop it on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-encoder-server", daemon=True)
    thread.start()
    config = server_config(snapshot, **overrides)
    created: Future[EncoderServer] = asyncio.run_coroutine_threadsafe(create_server(config, load_encoder), loop)
    server = RunningServer(created.result(30), loop, thread)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        server.channel.close()
        server.run(server.handle.stop(grace_s=1))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
