"""`flux2-encoder`: run the FLUX.2 text-encoder gRPC server, or check one's health.

Only `serve` imports torch and the model libraries: `health` and `--help` answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from encoder_server.config import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_PENDING_REPLY_BYTES,
    DEFAULT_SEND_TIMEOUT_S,
    DEFAULT_SHUTDOWN_GRACE_S,
    MIB,
    QUANTIZE_CHOICES,
    SUPPORTED_DTYPES,
    BatchingConfig,
    CallerLimits,
    ConfigError,
    ConnectionLimits,
    ModelConfig,
    RequestLimits,
    ServerConfig,
    TlsConfig,
    UpsampleLimits,
    parse_model_option,
    read_pem,
)
from encoder_server.errors import ServerError
from encoder_server.health_check import check_health
from shared.command_line import run_command
from shared.defaults import DEFAULT_PORT
from shared.printable import OneLineParser, finite_number, printable_line

if TYPE_CHECKING:
    from encoder_server.model.families import Family


def _model_flags(group: argparse._ArgumentGroup) -> None:
    """What to load: snapshots, device, dtype, quantisation."""
    group.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="PATH[,OPTION...]",
        help="root of a local FLUX.2 diffusers snapshot (FLUX.2-dev or [klein]); repeat to serve several, the first "
        "answering requests that name none. Options after the path override the server-wide flags for this "
        "model: name=NAME, quantize=none|int8|nf4, max_layer=N, dtype=..., device=..., upsampling",
    )
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    group.add_argument("--dtype", choices=SUPPORTED_DTYPES, help="default: float32 unquantised on CPU, else bfloat16")
    group.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="weights in int8 or nf4 (bitsandbytes), quantised while loading (default: as the snapshot is saved)",
    )


def _listening_flags(group: argparse._ArgumentGroup) -> None:
    """Where to listen, and TLS."""
    group.add_argument("--host", default="[::]", help="address to bind (default: all interfaces)")
    group.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to bind; 0 picks one (default %(default)s)")
    group.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain; serve TLS only")
    group.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca", type=Path, default=None, help="PEM CA that client certificates must chain to (mTLS)"
    )
    group.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="also serve Hugging Face's /predict contract, /health and /metrics over HTTP on this port",
    )


def _limit_flags(group: argparse._ArgumentGroup) -> None:
    """Batching and what one request may ask for."""
    limits, batching = RequestLimits, BatchingConfig
    options: list[tuple[str, type | object, object, str]] = [
        ("--max-batch-size", int, batching.max_batch_size, "prompts per forward pass and per request"),
        (
            "--batch-wait-ms",
            finite_number,
            batching.batch_wait_ms,
            "how long a request may wait for others (0 to 10000)",
        ),
        ("--max-queued-prompts", int, batching.max_queued_prompts, "beyond it requests get RESOURCE_EXHAUSTED"),
        (
            "--max-layer",
            int,
            None,
            "load decoder layers 1..N only (default: the deepest the family stacks, 30 for dev, 27 for klein)",
        ),
        ("--max-prompt-chars", int, limits.max_prompt_chars, "longest prompt accepted, in characters"),
        ("--max-hidden-state-layers", int, limits.max_hidden_state_layers, "most layers one request may stack"),
        ("--max-reply-mib", int, limits.max_reply_bytes // MIB, "largest reply one request may ask for, in MiB"),
        (
            "--max-pending-reply-mib",
            int,
            DEFAULT_MAX_PENDING_REPLY_BYTES // MIB,
            "replies queued, computing or being sent, all callers together; beyond it RESOURCE_EXHAUSTED",
        ),
        (
            "--send-timeout-s",
            finite_number,
            DEFAULT_SEND_TIMEOUT_S,
            "drop a reply the client has not read for this long",
        ),
        (
            "--shutdown-grace-s",
            finite_number,
            DEFAULT_SHUTDOWN_GRACE_S,
            "on SIGTERM, how long queued and in-flight requests may take to finish",
        ),
    ]
    for flag, kind, default, meaning in options:
        suffix = "" if default is None else " (default %(default)s)"
        group.add_argument(flag, type=kind, default=default, help=meaning + suffix)  # type: ignore[arg-type]


def _upsampling_flags(group: argparse._ArgumentGroup) -> None:
    """Serving Upsample beside Encode."""
    group.add_argument(
        "--enable-upsampling",
        action="store_true",
        help="load the whole Mistral3 model (all layers, vision tower, LM head) and serve Upsample, for every "
        "--model (FLUX.2-dev only; for one of several, write ,upsampling after its path)",
    )
    upsampling = UpsampleLimits
    for flag, default, meaning in (
        ("--max-upsample-prompts", upsampling.max_prompts, "prompts one Upsample request may rewrite"),
        ("--max-upsample-images", upsampling.max_images, "reference images in one Upsample request"),
        ("--max-upsample-image-mib", upsampling.max_image_bytes // MIB, "largest reference image file, in MiB"),
        ("--max-upsample-image-pixels", upsampling.max_image_pixels, "largest reference image, in pixels"),
        ("--max-new-tokens", upsampling.max_new_tokens, "most tokens one upsampled prompt may have"),
        ("--max-queued-upsamples", upsampling.max_queued, "Upsample requests waiting; beyond it RESOURCE_EXHAUSTED"),
    ):
        group.add_argument(flag, type=int, default=default, help=f"{meaning} (default %(default)s)")


def _caller_flags(group: argparse._ArgumentGroup) -> None:
    """Who may call, how much, and what they are shown."""
    group.add_argument(
        "--tokens-file",
        "--auth-token-file",
        dest="tokens_file",
        type=Path,
        default=None,
        help="require `authorization: Bearer <token>` on encoder calls; the file holds `name token` lines "
        "(or one bare token); SIGHUP reloads it",
    )
    group.add_argument(
        "--cache-mib",
        type=int,
        default=DEFAULT_CACHE_BYTES // MIB,
        help="embedding cache budget in MiB; 0 turns the cache off (default %(default)s)",
    )
    group.add_argument(
        "--shared-cache",
        action="store_true",
        help="one embedding cache for every caller: callers reuse each other's work, but a fast reply tells one "
        "caller that another sent the same prompt (default: a cache per token name)",
    )
    group.add_argument(
        "--metrics-token-file",
        type=Path,
        default=None,
        help="require this bearer token on /metrics, which then shows per-caller and cache detail "
        "(default: /metrics is open and shows neither)",
    )
    group.add_argument(
        "--caller-max-in-flight",
        type=int,
        default=None,
        help="calls one token name may have in flight; a tokens-file line may set its own max_in_flight=N "
        "(default: no limit; with no tokens, every caller is one)",
    )
    group.add_argument(
        "--caller-prompts-per-s",
        type=finite_number,
        default=None,
        help="prompts per second one token name may send; a tokens-file line may set its own prompts_per_s=R "
        "(default: no limit)",
    )


def _connection_flags(group: argparse._ArgumentGroup) -> None:
    """Slow and idle connections."""
    connections = ConnectionLimits
    for flag, kind, default, meaning in (
        ("--max-http-connections", int, connections.max_http_connections, "open HTTP connections; past it 503"),
        ("--max-grpc-connections", int, connections.max_grpc_connections, "open gRPC connections"),
        (
            "--http-header-timeout-s",
            finite_number,
            connections.http_header_timeout_s,
            "seconds for a request's headers",
        ),
        (
            "--grpc-handshake-timeout-s",
            finite_number,
            connections.grpc_handshake_timeout_s,
            "seconds for a gRPC connection's TLS and HTTP/2 set-up",
        ),
    ):
        group.add_argument(flag, type=kind, default=default, help=f"{meaning} (default %(default)s)")
    group.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="report SERVING without first running one pass at --max-batch-size (a model that cannot run then "
        "fails on every request instead of at start-up)",
    )
    group.add_argument("--log-prompts", action="store_true", help="write prompt text in the per-request log line")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="flux2-encoder", description="FLUX.2 text encoder over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    serve = commands.add_parser("serve", help="load a snapshot's text encoder and serve embeddings")
    _model_flags(serve.add_argument_group("models"))
    _listening_flags(serve.add_argument_group("listening (gRPC, and HTTP /predict)"))
    _limit_flags(serve.add_argument_group("batching and request limits"))
    _upsampling_flags(serve.add_argument_group("prompt upsampling"))
    _caller_flags(serve.add_argument_group("callers: tokens, limits, cache, metrics"))
    _connection_flags(serve.add_argument_group("connections"))
    health = commands.add_parser("health", help="print a server's health; exit 0 once it is SERVING")
    health.add_argument("target", help="HOST:PORT of the server")
    health.add_argument("--wait", type=finite_number, default=0.0, help="keep polling up to this many seconds")
    health.add_argument("--tls-ca", type=Path, default=None, help="PEM CA of a TLS server")
    health.add_argument("--tls-cert", type=Path, default=None, help="PEM client certificate, for an mTLS server")
    health.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    defaults = ModelConfig(
        model_path=Path(),
        device=device,
        dtype=args.dtype,
        max_layer=args.max_layer,
        quantize=args.quantize,
        enable_upsampling=args.enable_upsampling,
    )
    return ServerConfig(
        models=tuple(parse_model_option(text, defaults) for text in args.model),
        host=args.host,
        port=args.port,
        batching=BatchingConfig(
            max_batch_size=args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms,
            max_queued_prompts=args.max_queued_prompts,
        ),
        limits=RequestLimits(
            max_prompts=args.max_batch_size,
            max_prompt_chars=args.max_prompt_chars,
            max_hidden_state_layers=args.max_hidden_state_layers,
            max_reply_bytes=args.max_reply_mib * MIB,
        ),
        upsampling=UpsampleLimits(
            max_prompts=args.max_upsample_prompts,
            max_images=args.max_upsample_images,
            max_image_bytes=args.max_upsample_image_mib * MIB,
            max_image_pixels=args.max_upsample_image_pixels,
            max_new_tokens=args.max_new_tokens,
            max_queued=args.max_queued_upsamples,
        ),
        shutdown_grace_s=args.shutdown_grace_s,
        send_timeout_s=args.send_timeout_s,
        max_pending_reply_bytes=args.max_pending_reply_mib * MIB,
        tokens_file=args.tokens_file,
        tls=_tls_config(args.tls_cert, args.tls_key, args.tls_client_ca),
        cache_bytes=args.cache_mib * MIB,
        log_prompts=args.log_prompts,
        http_port=args.http_port,
        shared_cache=args.shared_cache,
        metrics_token_file=args.metrics_token_file,
        caller_limits=CallerLimits(args.caller_max_in_flight, args.caller_prompts_per_s),
        connections=ConnectionLimits(
            max_http_connections=args.max_http_connections,
            max_grpc_connections=args.max_grpc_connections,
            http_header_timeout_s=args.http_header_timeout_s,
            grpc_handshake_timeout_s=args.grpc_handshake_timeout_s,
        ),
        warm_up=args.warm_up,
    )


def _tls_config(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsConfig | None:
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key: client certificates need TLS.")
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together; give both.")
    return TlsConfig(cert, key, client_ca)


def _health_tls(args: argparse.Namespace) -> tuple[bytes | None, bytes | None, bytes | None] | None:
    if args.tls_ca is None and args.tls_cert is None and args.tls_key is None:
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together; give both.")
    ca = None if args.tls_ca is None else read_pem("--tls-ca", args.tls_ca)
    if args.tls_cert is None:
        return ca, None, None
    cert, key, _ = TlsConfig(args.tls_cert, args.tls_key).read()  # the pair checked as the server checks its own
    return ca, key, cert


def run_serve(args: argparse.Namespace) -> None:
    import asyncio

    from encoder_server.model.families import detect_family
    from encoder_server.model.loading import resolve_snapshot
    from encoder_server.server import serve
    from shared.allocator import tune_allocator
    from shared.library_logs import quiet_model_libraries

    config = config_from_args(args)
    tune_allocator()  # replies are many MB each: reuse heap memory rather than fault in fresh pages per reply
    quiet_model_libraries()
    for model in config.models:  # fail before binding if a path is wrong, or a model cannot upsample
        text_encoder_dir, _ = resolve_snapshot(model.model_path)
        if model.enable_upsampling:
            _check_upsamples(model.model_path, detect_family(text_encoder_dir), server_wide=args.enable_upsampling)
    asyncio.run(serve(config))


def _check_upsamples(model_path: Path, family: Family, server_wide: bool) -> None:
    if family.can_upsample:
        return
    how = (
        "--enable-upsampling applies to every --model; write ,upsampling after the FLUX.2-dev model's path instead"
        if server_wide
        else "drop ,upsampling from its --model"
    )
    raise ConfigError(
        f"{model_path} holds a {family.name} text encoder (for {family.pipeline}), which does not upsample prompts; "
        f"upsampling needs FLUX.2-dev's Mistral3: {how}."
    )


def run(args: argparse.Namespace) -> int:
    if args.command == "health":
        return check_health(args.target, args.wait, _health_tls(args))
    run_serve(args)
    return 0


def exit_code(error: BaseException) -> int:
    """2 for what the operator can fix (flags, files, the model, a port), 1 for anything unforeseen."""
    return 2 if isinstance(error, ConfigError | ServerError | OSError) else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(
        "flux2-encoder",
        build_parser(),
        run,
        argv,
        exit_code=exit_code,
        failure_line=lambda error: printable_line(str(error) or type(error).__name__, 2000),
        log_format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        log_level=logging.INFO,
    )


if __name__ == "__main__":
    sys.exit(main())
