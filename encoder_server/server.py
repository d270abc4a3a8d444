"""Server factory: a real gRPC server with the encoder, health and reflection, on any port (0 too).

The server listens at once and reports NOT_SERVING while the model loads in a worker thread, so
orchestrators can watch it come up; it switches to SERVING when the first request could succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from encoder_server.auth import BearerTokenInterceptor
from encoder_server.batcher import DynamicBatcher
from encoder_server.config import ServerConfig
from encoder_server.prompt_encoder import PromptEncoder
from encoder_server.servicer import (
    EncoderState,
    ReadyEncoder,
    TextEncoderServicer,
    WirePayload,
    run_batch_on_host,
)
from shared.defaults import SERVICE_NAME
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import encode_tensor

log = logging.getLogger(__name__)

EncoderLoader = Callable[[], PromptEncoder]

# Large replies are chunked below 4 MiB; requests are small, but a batch of long prompts can pass 4 MiB.
MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class EncoderServer:
    """A started server; `port` is the bound port (useful when the config asked for 0)."""

    server: grpc.aio.Server
    port: int
    config: ServerConfig
    state: EncoderState
    health: HealthServicer
    loading: asyncio.Task[ReadyEncoder] = field(repr=False)

    async def wait_ready(self) -> ReadyEncoder:
        """Wait for the model; re-raises the load error if loading failed."""
        return await asyncio.shield(self.loading)

    async def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace period, then stop."""
        await self.health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        await self.server.stop(grace)
        if not self.loading.done():
            self.loading.cancel()
        ready = self.state.ready
        if ready is not None:
            await ready.batcher.close()


async def _run_in_daemon_thread(loader: EncoderLoader) -> PromptEncoder:
    """Load on a daemon thread: a stop signal during a minutes-long load must not wait for it to end."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[PromptEncoder] = loop.create_future()

    def settle(outcome: PromptEncoder | None, error: BaseException | None) -> None:
        if result.done():
            return
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(outcome)  # type: ignore[arg-type]

    def run() -> None:
        try:
            encoder: PromptEncoder | None = loader()
            error: BaseException | None = None
        except BaseException as failure:  # delivered to the awaiting task, which reports it
            encoder, error = None, failure
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped while loading
            loop.call_soon_threadsafe(settle, encoder, error)

    threading.Thread(target=run, name="load-encoder", daemon=True).start()
    return await result


async def _set_health(servicer: HealthServicer, status: int) -> None:
    for service in ("", SERVICE_NAME):
        await servicer.set(service, status)


async def create_server(config: ServerConfig, load_encoder: EncoderLoader | None = None) -> EncoderServer:
    """Bind, start and begin loading the model; `load_encoder` defaults to loading `config.model`."""
    loader = load_encoder or (lambda: PromptEncoder.load(config.model, config.limits))
    interceptors = [BearerTokenInterceptor(config.auth_token)] if config.auth_token else []
    options = [
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        # gRPC enables SO_REUSEPORT by default: a second server on a busy port would start and silently
        # take half the traffic. One port, one server.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    state = EncoderState()
    encoder_pb2_grpc.add_TextEncoderServicer_to_server(TextEncoderServicer(state), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            encoder_pb2.DESCRIPTOR.services_by_name["TextEncoder"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        port = server.add_insecure_port(config.address)
    except RuntimeError as error:  # grpc reports a failed bind this way
        raise OSError(f"could not bind {config.address}; is another process using the port?") from error
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()

    async def load() -> ReadyEncoder:
        started = time.perf_counter()
        encoder = await _run_in_daemon_thread(loader)
        batcher: DynamicBatcher[torch.Tensor, WirePayload] = DynamicBatcher(
            lambda requests: run_batch_on_host(encoder, list(requests)), encode_tensor, config.batching
        )
        batcher.start()
        ready = ReadyEncoder(encoder, batcher, max_prompts_per_request=config.batching.max_batch_size)
        state.set_ready(ready)
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        log.info("model loaded in %.1f s", time.perf_counter() - started)
        return ready

    loading = asyncio.get_running_loop().create_task(load(), name="load-encoder")
    return EncoderServer(server, port, config, state, health_servicer, loading)
