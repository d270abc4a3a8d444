"""Server factory and serve loop: a real gRPC server with the encoder, health and reflection, on any port (0 too).

The server listens at once and reports NOT_SERVING while the model loads in a worker thread, so
orchestrators can watch it come up; it switches to SERVING when the first request could succeed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from encoder_server.config import ServerConfig
from encoder_server.engine import EncoderEngine, EncoderLoader
from encoder_server.interceptors import BearerTokenInterceptor, ParseRequestsInterceptor
from encoder_server.models import load_models
from encoder_server.prompt_encoder import PromptEncoder
from encoder_server.servicer import TextEncoderServicer
from shared.defaults import SERVICE_NAME
from shared.protocol import encoder_pb2, encoder_pb2_grpc

log = logging.getLogger("flux2-encoder")

# Room for the protobuf framing around the largest request the limits allow.
RECEIVE_SLACK_BYTES = 16 * 1024


@dataclass
class EncoderServer:
    """A started server; `port` is the bound port (useful when the config asked for 0)."""

    server: grpc.aio.Server
    port: int
    config: ServerConfig
    engine: EncoderEngine
    health: health_aio.HealthServicer
    loading: asyncio.Task[PromptEncoder] = field(repr=False)

    async def wait_ready(self) -> PromptEncoder:
        """Wait for the model; re-raises the load error if loading failed."""
        return await asyncio.shield(self.loading)

    async def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let queued and in-flight calls finish within the grace period, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.shutdown_grace_s if grace_s is None else grace_s)
        if not self.loading.done():
            self.loading.cancel()
        await self.engine.close()


async def _set_health(servicer: health_aio.HealthServicer, status: int) -> None:
    for service in ("", SERVICE_NAME):
        await servicer.set(service, status)


async def create_server(config: ServerConfig, load_encoder: EncoderLoader | None = None) -> EncoderServer:
    """Bind, start and begin loading the model; `load_encoder` defaults to loading `config.model`."""
    engine = EncoderEngine(
        config, load_encoder or (lambda: load_models(config.model, config.limits, config.upsampling))
    )
    interceptors: list[grpc.aio.ServerInterceptor] = [ParseRequestsInterceptor()]
    if config.auth_token:
        interceptors.insert(0, BearerTokenInterceptor(config.auth_token))
    options = [
        ("grpc.max_receive_message_length", config.max_request_bytes + RECEIVE_SLACK_BYTES),
        # gRPC enables SO_REUSEPORT by default: a second server on a busy port would start and silently
        # take half the traffic. One port, one server.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    encoder_pb2_grpc.add_TextEncoderServicer_to_server(TextEncoderServicer(engine, config.send_timeout_s), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (encoder_pb2.DESCRIPTOR.services_by_name["TextEncoder"].full_name, health.SERVICE_NAME)
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(config.address)
    except RuntimeError as error:  # grpc reports a failed bind this way
        raise OSError(f"could not bind {config.address}; is another process using the port?") from error
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()

    async def load() -> PromptEncoder:
        encoder = await engine.load()
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        return encoder

    loading = asyncio.get_running_loop().create_task(load(), name="load-encoder")
    return EncoderServer(server, port, config, engine, health_servicer, loading)


def ready_line(server: EncoderServer, seconds: float) -> str:
    info = server.engine.info()
    weights = "" if info.quantization == "none" else f"{info.quantization} weights, "
    batch = f"max batch {server.config.batching.max_batch_size}"
    upsampling = ", upsampling on" if info.upsampling_available else ""
    resident_gib = info.weight_bytes / 2**30
    return (
        f"ready on {server.config.host}:{server.port} in {seconds:.1f} s: {info.model_name}, "
        f"{info.max_layer}/{info.num_layers} layers, hidden {info.hidden_size}, {weights}{info.dtype} "
        f"on {info.device}, {resident_gib:.2f} GiB resident, {batch}{upsampling}"
    )


async def serve(config: ServerConfig, load_encoder: EncoderLoader | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain queued and in-flight requests and stop.

    Logs one line when listening and one when ready; a failed load is raised after the server stops.
    """
    started = time.perf_counter()
    server = await create_server(config, load_encoder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%d, loading %s", config.host, server.port, config.model.model_path)
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({server.loading, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if server.loading in done:
        try:
            await server.wait_ready()
        except BaseException:
            await server.stop(grace_s=0)
            raise
        log.info("%s", ready_line(server, time.perf_counter() - started))
        await waiter
    log.info("shutting down (grace %g s)", config.shutdown_grace_s)
    await server.stop()
