"""`flux2-serve`'s flags and the checked `ServeSettings` they describe: shared by the command and by Ray Serve's
application builder (`ray_deployment.app_builder`), so a RayService's flags are checked as the command's are."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffusion_client.commands import (
    add_model_arguments,
    seconds_between,
    whole_number,
)
from diffusion_client.encoder_client.flags import add_encoder_arguments, token_from_args
from diffusion_client.errors import InputError
from diffusion_client.provenance.flags import add_marking_arguments, marking_from_args
from diffusion_client.studio.auth import LOOPBACK
from diffusion_client.studio.cli import port_number
from shared.printable import OneLineParser

PROG = "flux2-serve"
DEFAULT_PORT = 8000  # what OpenAI-compatible servers (vLLM, SGLang, LiteLLM's examples) listen on
DEFAULT_URL_TTL_S = 3600


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Serve FLUX.2 images in OpenAI's Images API (/v1/images/generations, /v1/images/edits), with "
        "embeddings from flux2-encoder.",
    )
    add_encoder_arguments(parser)
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
        "--max-queue",
        type=whole_number(1, 100_000),
        default=64,
        help="requests waiting, all callers (default %(default)s)",
    )
    callers.add_argument(
        "--max-queue-per-caller",
        type=whole_number(1, 100_000),
        default=8,
        help="requests one caller may have waiting; callers are served round robin (default %(default)s)",
    )
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-n", type=whole_number(1, 64), default=8, help="images per request (default %(default)s)")
    limits.add_argument(
        "--max-steps", type=whole_number(1, 1000), default=100, help="steps per image (default %(default)s)"
    )
    limits.add_argument(
        "--max-side", type=whole_number(16, 8192), default=2048, help="largest width or height (default %(default)s)"
    )
    limits.add_argument(
        "--max-references", type=whole_number(1, 16), default=8, help="images per edit (default %(default)s)"
    )
    limits.add_argument(
        "--max-image-mib", type=whole_number(1, 200), default=20, help="largest uploaded image (default %(default)s)"
    )
    limits.add_argument(
        "--body-timeout",
        type=seconds_between(1, 3600),
        default=60.0,
        help="seconds a request's body may take to arrive (default %(default)s)",
    )
    files = parser.add_argument_group("url replies")
    files.add_argument(
        "--out-dir", type=Path, default=Path("serve-images"), help="where `url` images are kept (default %(default)s)"
    )
    files.add_argument(
        "--url-ttl",
        type=seconds_between(1, 30 * 86400),
        default=DEFAULT_URL_TTL_S,
        help="seconds a `url` image is served, then deleted (default %(default)s)",
    )
    files.add_argument("--public-url", help="the base URL callers reach this server at, for `url` replies")
    parser.add_argument("--lora-dir", type=Path, help="folder of LoRA .safetensors files requests may name")
    add_model_arguments(parser, cache="memory for embeddings already fetched, per replica")
    ray = parser.add_argument_group("many GPUs (Ray Serve)")
    ray.add_argument("--ray", metavar="ADDRESS", help="deploy on the Ray cluster at ADDRESS (or `local`)")
    ray.add_argument("--replicas", type=whole_number(1, 1024), help="replicas, one GPU each (default 1)")
    ray.add_argument("--min-replicas", type=whole_number(0, 1024), help="autoscale from this many replicas")
    ray.add_argument("--max-replicas", type=whole_number(1, 1024), help="autoscale up to this many replicas")
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
    from diffusion_client.generation.pipeline import model_kind
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
        from shared.caller_limits import ConfigError

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
