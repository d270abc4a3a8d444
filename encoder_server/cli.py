"""`flux2-encoder serve`: run the FLUX.2 text-encoder gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from encoder_server.config import (
    SUPPORTED_DTYPES,
    BatchingConfig,
    ConfigError,
    ModelConfig,
    RequestLimits,
    ServerConfig,
)
from encoder_server.errors import EncoderError
from encoder_server.loading import resolve_snapshot
from encoder_server.server import create_server
from shared.defaults import DEFAULT_PORT
from shared.quiet import quiet_model_libraries

log = logging.getLogger("flux2-encoder")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flux2-encoder", description="FLUX.2 text encoder over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="load a snapshot's text encoder and serve embeddings")
    serve.add_argument("--model", required=True, type=Path, help="root of a local FLUX.2 diffusers snapshot")
    serve.add_argument("--host", default="[::]", help="address to bind (default: all interfaces)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to bind; 0 picks one (default {DEFAULT_PORT})"
    )
    serve.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    serve.add_argument("--dtype", choices=SUPPORTED_DTYPES, help="default: bfloat16 on CUDA, float32 on CPU")
    serve.add_argument(
        "--max-batch-size",
        type=int,
        default=BatchingConfig.max_batch_size,
        help="prompts per forward pass and per request (default %(default)s)",
    )
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=BatchingConfig.batch_wait_ms,
        help="how long a request may wait for others to share its pass (default %(default)s)",
    )
    serve.add_argument(
        "--max-queued-prompts",
        type=int,
        default=BatchingConfig.max_queued_prompts,
        help="queue bound; beyond it requests get RESOURCE_EXHAUSTED (default %(default)s)",
    )
    serve.add_argument(
        "--max-layer",
        type=int,
        default=None,
        help="load decoder layers 1..N only (30 saves a quarter of Mistral's weights)",
    )
    serve.add_argument(
        "--max-prompt-chars",
        type=int,
        default=RequestLimits.max_prompt_chars,
        help="longest prompt accepted, in characters (default %(default)s)",
    )
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="require `authorization: Bearer <token>` on encoder calls; the file holds the token",
    )
    health = commands.add_parser("health", help="print a server's health; exit 0 once it is SERVING")
    health.add_argument("target", help="HOST:PORT of the server")
    health.add_argument("--wait", type=float, default=0.0, help="keep polling up to this many seconds")
    return parser


def check_health(target: str, wait_s: float) -> int:
    """Poll grpc.health.v1 for the encoder service; 0 when SERVING, 1 otherwise."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shared.defaults import SERVICE_NAME

    deadline = time.monotonic() + wait_s
    status = "UNREACHABLE"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                status = f"UNREACHABLE ({error.code().name})" if isinstance(error, grpc.Call) else "UNREACHABLE"
            if status == "SERVING" or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
    print(f"{target}: {status}")
    return 0 if status == "SERVING" else 1


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        model=ModelConfig(
            model_path=args.model,
            device=args.device or default_device(),
            dtype=args.dtype,
            max_layer=args.max_layer,
        ),
        host=args.host,
        port=args.port,
        batching=BatchingConfig(
            max_batch_size=args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms,
            max_queued_prompts=args.max_queued_prompts,
        ),
        limits=RequestLimits(max_prompt_chars=args.max_prompt_chars),
        auth_token=_read_token(args.auth_token_file),
    )


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"cannot read --auth-token-file {path}: {error.strerror}.") from error


async def serve(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight requests and stop."""
    started = time.perf_counter()
    resolve_snapshot(config.model.model_path)  # fail before binding if the path is wrong
    server = await create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%d, loading %s", config.host, server.port, config.model.model_path)
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({server.loading, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if server.loading in done:
        try:
            ready = await server.wait_ready()
        except BaseException:
            await server.stop(grace_s=0)
            raise
        info = ready.encoder.info
        log.info(
            "ready on %s:%d in %.1f s: %s, %d/%d layers, hidden %d, %s on %s, max batch %d",
            config.host,
            server.port,
            time.perf_counter() - started,
            info.model_name,
            info.max_layer,
            info.num_layers,
            info.hidden_size,
            info.dtype,
            info.device,
            config.batching.max_batch_size,
        )
        await waiter
    log.info("shutting down (grace %.0f s)", config.shutdown_grace_s)
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    quiet_model_libraries()
    if args.command == "health":
        return check_health(args.target, args.wait)
    try:
        config = config_from_args(args)
        asyncio.run(serve(config))
    except (ConfigError, EncoderError, OSError) as error:
        print(f"flux2-encoder: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
