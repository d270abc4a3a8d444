"""Server factory and serve loop: a real gRPC server with the encoder, health and reflection, on any port (0 too).

The server listens at once and reports NOT_SERVING while its models load in a worker thread, so
orchestrators can watch it come up; it switches to SERVING when every model has loaded.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from encoder_server.api.http_api import HttpAccess, HttpServer, start_http_server
from encoder_server.api.interceptors import BearerTokenInterceptor, ParseRequestsInterceptor
from encoder_server.api.servicer import TextEncoderServicer, add_servicer_to_server
from encoder_server.config import CallerLimits, ConfigError, ServerConfig
from encoder_server.errors import OverloadedError
from encoder_server.file_descriptors import DescriptorBudget, plan_descriptors
from encoder_server.model.prompt_encoder import PromptEncoder
from encoder_server.observability.calls import CallLog
from encoder_server.serving.engine import EncoderEngine, EncoderLoader
from encoder_server.serving.models import ServedEngines
from shared.defaults import SERVICE_NAME
from shared.protocol import encoder_pb2
from shared.quotas import CallerQuotas
from shared.tokens import ANONYMOUS, TokenRegistry

log = logging.getLogger("flux2-encoder")

# Room for the protobuf framing around the largest request the limits allow.
RECEIVE_SLACK_BYTES = 16 * 1024
MAX_GET_INFO_REQUEST_BYTES = 1024  # a model name (at most 128 characters), and room for fields a later client adds
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000


@dataclass
class EncoderServer:
    """A started server; `port` is the bound port (useful when the config asked for 0)."""

    server: grpc.aio.Server
    port: int
    config: ServerConfig
    engines: ServedEngines  # one engine per model served
    health: health_aio.HealthServicer
    loading: asyncio.Task[PromptEncoder] = field(repr=False)
    tokens: TokenRegistry | None = field(default=None, repr=False)
    calls: CallLog | None = field(default=None, repr=False)
    http: HttpServer | None = field(default=None, repr=False)  # the Hugging Face-compatible /predict endpoint
    descriptors: DescriptorBudget | None = field(default=None, repr=False)
    metrics_tokens: TokenRegistry | None = field(default=None, repr=False)
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def engine(self) -> EncoderEngine:
        """The first model's engine, which requests naming no model get."""
        return self.engines.default

    @property
    def http_port(self) -> int | None:
        """The HTTP endpoint's bound port; None when it is not served."""
        return None if self.http is None else self.http.port

    async def reload_tokens(self) -> None:
        """Re-read the tokens files (SIGHUP) off the event loop, one reload at a time; a file that cannot be read or
        parsed leaves its old tokens in force."""
        registries = [("tokens", r) for r in (self.tokens,) if r is not None and r.path is not None]
        registries += [("metrics token", r) for r in (self.metrics_tokens,) if r is not None and r.path is not None]
        if not registries:
            log.warning("SIGHUP: no --tokens-file to reload")
            return
        async with self._reloading:
            for what, registry in registries:
                try:
                    names = await asyncio.to_thread(registry.reload)
                except ConfigError as error:
                    log.error("SIGHUP: kept the previous %s: %s", what, error)
                    continue
                if registry is self.tokens:
                    self.engines.set_callers(names)
                    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
                    log.info("SIGHUP: tokens reloaded: %d names (%s)", len(names), shown)
                else:
                    log.info("SIGHUP: metrics token reloaded")

    async def wait_ready(self) -> PromptEncoder:
        """Wait for every model; the first one's encoder. Re-raises the load error if loading failed."""
        return await asyncio.shield(self.loading)

    async def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let queued and in-flight calls finish within the grace period, then stop."""
        await self.health.enter_graceful_shutdown()
        grace_s = self.config.shutdown_grace_s if grace_s is None else grace_s
        await asyncio.gather(self.server.stop(grace_s), *([self.http.stop(grace_s)] if self.http else []))
        if not self.loading.done():
            self.loading.cancel()
        await self.engines.close()


async def _set_health(servicer: health_aio.HealthServicer, status: int) -> None:
    for service in ("", SERVICE_NAME):
        await servicer.set(service, status)


async def create_server(config: ServerConfig, load_encoder: EncoderLoader | None = None) -> EncoderServer:
    """Bind, start and begin loading every model; `load_encoder` replaces loading the first one (`config.model`).

    Raises `ConfigError` before binding when two models would have the same name."""
    engines = ServedEngines.build(config, load_first=load_encoder)
    tokens = _tokens(config)
    engines.set_callers(tokens.names if tokens is not None else [ANONYMOUS])
    metrics_tokens = None if config.metrics_token_file is None else TokenRegistry.from_file(config.metrics_token_file)
    calls = CallLog(engines.metrics, config.log_prompts)
    quotas = CallerQuotas(_limits_of(config, tokens), config.limits.max_prompts, overloaded=OverloadedError)
    descriptors = plan_descriptors(config.connections, serve_http=config.http_port is not None)
    per_method = {
        "Encode": config.limits.max_request_bytes + RECEIVE_SLACK_BYTES,
        "GetInfo": MAX_GET_INFO_REQUEST_BYTES,
    }
    interceptors: list[grpc.aio.ServerInterceptor] = [ParseRequestsInterceptor(per_method)]
    if tokens is not None:
        interceptors.insert(0, BearerTokenInterceptor(tokens))
    options = [
        ("grpc.max_receive_message_length", config.max_request_bytes + RECEIVE_SLACK_BYTES),
        # Connections that never finish TLS and HTTP/2 set-up are closed, and no more than the descriptor budget
        # are held: idle sockets cannot starve the process of descriptors.
        ("grpc.server_handshake_timeout_ms", int(config.connections.grpc_handshake_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", descriptors.max_grpc_connections),
        # gRPC enables SO_REUSEPORT by default: a second server on a busy port would start and silently
        # take half the traffic. One port, one server.
        ("grpc.so_reuseport", 0),
        # Clients of replicas behind one DNS name re-resolve it only when a connection closes: closing each
        # connection after a while (calls in flight get the send timeout to finish) lets them find new replicas.
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", int(config.send_timeout_s * 1000)),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    add_servicer_to_server(TextEncoderServicer(engines, calls, quotas, config.send_timeout_s), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (encoder_pb2.DESCRIPTOR.services_by_name["TextEncoder"].full_name, health.SERVICE_NAME)
    reflection.enable_server_reflection((*service_names, reflection.SERVICE_NAME), server)
    try:
        port = _bind(server, config)
    except RuntimeError as error:  # grpc reports a failed bind this way
        raise OSError(f"could not bind {config.address}; is another process using the port?") from error
    http = None
    if config.http_port is not None:
        access = HttpAccess(tokens, calls, quotas, metrics_tokens)
        http = await start_http_server(config, engines, access, descriptors.max_http_connections)
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()

    async def load() -> PromptEncoder:
        encoder = await engines.load()
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        return encoder

    loading = asyncio.get_running_loop().create_task(load(), name="load-encoder")
    return EncoderServer(
        server, port, config, engines, health_servicer, loading, tokens, calls, http, descriptors, metrics_tokens
    )


def _limits_of(config: ServerConfig, tokens: TokenRegistry | None) -> Callable[[str], CallerLimits]:
    """Each caller's limits: its tokens-file line's, else the server's defaults."""
    if tokens is None:
        return lambda caller: config.caller_limits
    return lambda caller: tokens.limits(caller).over(config.caller_limits)


def _tokens(config: ServerConfig) -> TokenRegistry | None:
    if config.tokens_file is not None:
        return TokenRegistry.from_file(config.tokens_file)
    if config.auth_token is not None:
        return TokenRegistry.single(config.auth_token)
    return None


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Listen on the configured address, only over TLS when TLS is configured."""
    if config.tls is None:
        return server.add_insecure_port(config.address)
    cert, key, client_ca = config.tls.read()
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    return server.add_secure_port(config.address, credentials)


def _model_line(engine: EncoderEngine, config: ServerConfig, family: bool) -> str:
    """One model's part of the ready line; its family too when a server serves several."""
    info = engine.info()
    weights = "" if info.quantization == "none" else f"{info.quantization} weights, "
    batch = f"max batch {config.batching.max_batch_size}"
    upsampling = ", upsampling on" if info.upsampling_available else ""
    resident_gib = info.weight_bytes / 2**30
    warmed = f", warm-up pass {engine.warm_up_s:.2f} s" if engine.warm_up_s is not None else ""
    name = f"{info.model_name} ({info.family} for {info.pipeline})" if family else info.model_name
    return (
        f"{name}, {info.max_layer}/{info.num_layers} layers, hidden {info.hidden_size}, {weights}{info.dtype} "
        f"on {info.device}, {resident_gib:.2f} GiB resident, {batch}{upsampling}{warmed}"
    )


def ready_line(server: EncoderServer, seconds: float) -> str:
    config = server.config
    several = len(server.engines) > 1
    models = "; ".join(_model_line(engine, config, several) for engine in server.engines)
    names = len(server.tokens.names) if server.tokens else 0
    cache = "cache off"
    if config.cache_bytes:
        cache = f"cache {config.cache_bytes / 2**20:.0f} MiB " + ("shared" if config.shared_cache else "per caller")
        if several:
            cache += f" ({config.cache_bytes_per_model / 2**20:.0f} MiB per model)"
    team = [
        "TLS" + (" with client certificates" if config.tls and config.tls.client_ca else "") if config.tls else "",
        f"{names} token name{'' if names == 1 else 's'}" if server.tokens else "",
        cache,
        f"HTTP /predict on port {server.http_port}" if server.http_port is not None else "",
        "" if server.descriptors is None else server.descriptors.describe(),
    ]
    return f"ready on {config.host}:{server.port} in {seconds:.1f} s: {models}; " + ", ".join(p for p in team if p)


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
    reloads: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references to tasks

    def reload() -> None:
        task = loop.create_task(server.reload_tokens(), name="reload-tokens")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loading = ", ".join(str(model.model_path) for model in config.models)
    log.info("listening on %s:%d, loading %s", config.host, server.port, loading)
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
