"""`flux2-serve`: OpenAI's Images API in front of one generator box (uvicorn), or in front of many GPUs as a Ray
Serve deployment (`--ray`). Flags are checked before anything heavy is imported; a failure is one line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from typing import Any

from diffusion_client.commands import note, run_command
from diffusion_client.errors import InputError
from diffusion_client.serve.flags import PROG, build_parser, exposure_note, settings_from_args

MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0
DRAIN_S = 300.0  # SIGTERM lets the job in flight finish (a full-size image with 50 steps takes about a minute)

log = logging.getLogger(PROG)


def run(args: argparse.Namespace) -> int:
    if args.replicas is not None and (args.min_replicas is not None or args.max_replicas is not None):
        raise InputError("give --replicas, or --min-replicas/--max-replicas to autoscale, not both")
    if (args.replicas or args.min_replicas is not None or args.max_replicas) and args.ray is None:
        raise InputError("--replicas and --min/--max-replicas deploy on Ray: give --ray ADDRESS (or --ray local)")
    if args.gpus_per_replica is not None and not (math.isfinite(args.gpus_per_replica) and args.gpus_per_replica >= 0):
        raise InputError(f"--gpus-per-replica must be 0 or more, not {args.gpus_per_replica}")
    settings = settings_from_args(args)
    warning = exposure_note(args.host, args.tokens_file)
    if args.ray is not None:
        from diffusion_client.serve.ray_deployment import serve_on_ray

        return serve_on_ray(settings, args, warning)
    return asyncio.run(serve_one_box(settings, args.host, args.port, warning))


async def serve_one_box(settings: Any, host: str, port: int, warning: str | None) -> int:
    """Serve until SIGINT or SIGTERM, then finish the job in flight and stop; SIGHUP re-reads the tokens file."""
    from shared.http_guard import bind_listener, start_guarded_server
    from shared.library_logs import quiet_model_libraries

    quiet_model_libraries()
    from diffusion_client.serve.app import create_app
    from diffusion_client.serve.runtime import ServeRuntime

    try:
        sock = bind_listener(host, port)
    except OSError as error:
        raise InputError(str(error)) from None
    runtime = ServeRuntime(settings)
    server = await start_guarded_server(
        create_app(runtime.state),
        sock,
        max_connections=MAX_CONNECTIONS,
        header_timeout_s=HEADER_TIMEOUT_S,
        grace_s=DRAIN_S,
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(runtime))
    if warning:
        note(warning, PROG)
    print(f"{PROG}: serving {settings.model_id} on http://{host}:{server.port}/v1", file=sys.stderr, flush=True)
    await stopping.wait()
    print(f"{PROG}: stopping: finishing the image in flight, refusing new requests", file=sys.stderr, flush=True)
    finished = await asyncio.to_thread(runtime.drain, DRAIN_S)
    await server.stop(5.0)
    runtime.close()
    return 0 if finished else 1


def _reload(runtime: Any) -> None:
    from shared.caller_limits import ConfigError

    try:
        names = runtime.state.callers.reload()
    except ConfigError as error:
        log.warning("the tokens file did not reload (the old one stays): %s", error)
        return
    log.warning("tokens file reloaded: %d caller(s)", len(names))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_command(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
