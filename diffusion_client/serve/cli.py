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
from pathlib import Path
from typing import Any

from diffusion_client.cli import DEFAULT_CACHE_MIB, add_quantize_argument, cache_mib, note, run_command
from diffusion_client.encoder_flags import add_encoder_arguments, token_from_args
from diffusion_client.errors import InputError
from diffusion_client.provenance.flags import add_marking_arguments, marking_from_args
from diffusion_client.studio.auth import LOOPBACK
from diffusion_client.studio.cli import port_number, whole
from shared.one_line import OneLineParser

PROG = "flux2-serve"
DEFAULT_PORT = 8000  # what OpenAI-compatible servers (vLLM, SGLang, LiteLLM's examples) listen on
DEFAULT_URL_TTL_S = 3600
MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0
DRAIN_S = 300.0  # SIGTERM lets the job in flight finish (a full-size image with 50 steps takes about a minute)

log = logging.getLogger(PROG)


def seconds(low: float, high: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number of seconds from {low:g} to {high:g}, not {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Serve FLUX.2 images in OpenAI's Images API (/v1/images/generations, /v1/images/edits), with "
        "embeddings from flux2-encoder.",
    )
    add_encoder_arguments(parser)
    parser.add_argument("--model", required=True, type=Path, help="local FLUX.2 snapshot (transformer/, vae/)")
    parser.add_argument("--encoder-model", metavar="NAME", help="which of the encoder server's models to use")
    parser.add_argument("--name", help="what requests and GET /v1/models call the model (default: its folder's name)")
    parser.add_argument("--host", default=LOOPBACK, help="address to listen on (default %(default)s: this machine)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="port (default %(default)s; 0: any)")
    callers = parser.add_argument_group("callers")
    callers.add_argument(
        "--tokens-file",
        type=Path,
        help="bearer tokens, flux2-encoder's format (`name token [max_in_flight=N] [prompts_per_s=R]` per line); "
        "reloaded on SIGHUP. Without it anyone who reaches the port may call",
    )
    callers.add_argument("--metrics-token-file", type=Path, help="bearer token for per-caller /metrics")
    callers.add_argument(
        "--max-queue", type=whole(1, 100_000), default=64, help="requests waiting, all callers (default %(default)s)"
    )
    callers.add_argument(
        "--max-queue-per-caller",
        type=whole(1, 100_000),
        default=8,
        help="requests one caller may have waiting; callers are served round robin (default %(default)s)",
    )
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-n", type=whole(1, 64), default=8, help="images per request (default %(default)s)")
    limits.add_argument("--max-steps", type=whole(1, 1000), default=100, help="steps per image (default %(default)s)")
    limits.add_argument(
        "--max-side", type=whole(16, 8192), default=2048, help="largest width or height (default %(default)s)"
    )
    limits.add_argument("--max-references", type=whole(1, 16), default=8, help="images per edit (default %(default)s)")
    limits.add_argument(
        "--max-image-mib", type=whole(1, 200), default=20, help="largest uploaded image (default %(default)s)"
    )
    limits.add_argument(
        "--body-timeout",
        type=seconds(1, 3600),
        default=60.0,
        help="seconds a request's body may take to arrive (default %(default)s)",
    )
    files = parser.add_argument_group("url replies")
    files.add_argument(
        "--out-dir", type=Path, default=Path("serve-images"), help="where `url` images are kept (default %(default)s)"
    )
    files.add_argument(
        "--url-ttl",
        type=seconds(1, 30 * 86400),
        default=DEFAULT_URL_TTL_S,
        help="seconds a `url` image is served, then deleted (default %(default)s)",
    )
    files.add_argument("--public-url", help="the base URL callers reach this server at, for `url` replies")
    parser.add_argument("--lora-dir", type=Path, help="folder of LoRA .safetensors files requests may name")
    add_quantize_argument(parser)
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument(
        "--cache-mib", type=cache_mib, default=DEFAULT_CACHE_MIB, help="memory for fetched embeddings, per replica"
    )
    ray = parser.add_argument_group("many GPUs (Ray Serve)")
    ray.add_argument("--ray", metavar="ADDRESS", help="deploy on the Ray cluster at ADDRESS (or `local`)")
    ray.add_argument("--replicas", type=whole(1, 1024), help="replicas, one GPU each (default 1)")
    ray.add_argument("--min-replicas", type=whole(0, 1024), help="autoscale from this many replicas")
    ray.add_argument("--max-replicas", type=whole(1, 1024), help="autoscale up to this many replicas")
    ray.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="GPUs each replica holds (default 1 where the cluster has GPUs, else 0)",
    )
    add_marking_arguments(parser)
    return parser


def read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {what} {path}: {error}") from error
    if not text or not (text.isascii() and text.isprintable()):
        raise InputError(f"{what} {path} must hold one line of printable ASCII")
    return text


def settings_from_args(args: argparse.Namespace) -> Any:
    """The checked `ServeSettings`; `InputError` for anything wrong, before anything loads."""
    from diffusion_client.pipeline import model_kind
    from diffusion_client.serve.fields import RequestLimits
    from diffusion_client.serve.runtime import ServeSettings
    from diffusion_client.serve.service import ServiceLimits

    token = token_from_args(args)
    marking = marking_from_args(args)
    model_kind(args.model)  # a folder that is not a FLUX.2 snapshot stops here, in one line
    if args.lora_dir is not None and not args.lora_dir.is_dir():
        raise InputError(f"--lora-dir {args.lora_dir} is not a folder")
    if args.tokens_file is not None:
        from diffusion_client.serve.callers import Callers
        from encoder_server.config import ConfigError

        try:
            Callers(args.tokens_file)  # a malformed tokens file stops here
        except ConfigError as error:
            raise InputError(str(error).rstrip(".")) from None
    metrics_token = read_secret(args.metrics_token_file, "--metrics-token-file") if args.metrics_token_file else None
    if args.max_queue_per_caller > args.max_queue:
        raise InputError(f"--max-queue-per-caller {args.max_queue_per_caller} is over --max-queue {args.max_queue}")
    name = args.name if args.name is not None else args.model.resolve().name
    if not (0 < len(name) <= 200 and name.isprintable()):
        raise InputError(f"--name must be 1 to 200 printable characters, not {name[:200]!r}")
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot make --out-dir {args.out_dir}: {error.strerror or error}") from error
    return ServeSettings(
        model=args.model,
        model_id=name,
        encoder_args=args,
        encoder_token=token,
        encoder_model=args.encoder_model,
        marking=marking,
        out_dir=args.out_dir.resolve(),
        device=args.device,
        quantize=args.quantize,
        cache_mib=args.cache_mib,
        tokens_file=args.tokens_file,
        metrics_token=metrics_token,
        lora_dir=args.lora_dir.resolve() if args.lora_dir else None,
        public_url=args.public_url.rstrip("/") if args.public_url else None,
        url_ttl_s=args.url_ttl,
        request_limits=RequestLimits(max_images=args.max_n, max_steps=args.max_steps, max_side=args.max_side),
        service_limits=ServiceLimits(max_queue=args.max_queue, max_queue_per_caller=args.max_queue_per_caller),
        max_references=args.max_references,
        max_image_bytes=args.max_image_mib << 20,
        body_deadline_s=args.body_timeout,
    )


def exposure_note(host: str, tokens_file: Path | None) -> str | None:
    if tokens_file is None and host not in (LOOPBACK, "localhost", "::1"):
        return (
            f"listening on {host} without --tokens-file: anyone who reaches this port can make images on this GPU; "
            "give --tokens-file"
        )
    return None


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
    from shared.quiet import quiet_model_libraries

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
    from encoder_server.config import ConfigError

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
