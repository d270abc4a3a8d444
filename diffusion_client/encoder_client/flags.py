"""The flags that reach an encoder server, shared by `flux2-generate` and `flux2-train-lora`: the target,
deadlines, the bearer token and TLS; and the `RemoteTextEncoder` they describe. Imports nothing heavy."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_client.errors import InputError
from shared.defaults import DEFAULT_PORT

if TYPE_CHECKING:
    from diffusion_client.encoder_client.client import RemoteTextEncoder

TOKEN_VARIABLE = "FLUX2_ENCODER_TOKEN"
DEFAULT_CONNECT_TIMEOUT_S = 5.0  # a wrong --encoder fails in seconds; a server that answered once is waited for


def positive_seconds(text: str) -> float:
    """`--timeout`, `--connect-timeout`: a positive, finite number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return seconds


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder",
        default=f"localhost:{DEFAULT_PORT}",
        help="HOST:PORT of flux2-encoder; replicas as HOST:PORT,HOST:PORT or dns:///NAME:PORT (round robin)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=120.0,
        help="deadline for each encoder call in seconds, retries of an unreachable or busy server included",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        help="until a server has answered once, give up after this many seconds, saying why nothing answered "
        "(nothing listening, not gRPC, TLS); raise it for a server still starting (default %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the bearer token for an authenticating proxy (or set ${TOKEN_VARIABLE})",
    )
    parser.add_argument("--token", help="bearer token; visible to other users in `ps`, prefer the two above")
    parser.add_argument("--tls", action="store_true", help="TLS, verifying the server with the system's CAs")
    parser.add_argument("--tls-ca", type=Path, help="TLS, verifying the server with this CA certificate (PEM)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for an mTLS server; needs --tls-key")
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")


def token_from_args(args: argparse.Namespace) -> str | None:
    """--token, else the first line of --token-file, else $FLUX2_ENCODER_TOKEN, else none; TLS flags checked too."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InputError("give --tls-cert and --tls-key together: a client certificate is sent with its key")
    if args.token is not None and args.token_file is not None:
        raise InputError("give --token or --token-file, not both")
    token: str | None = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read token file {args.token_file}: {error}") from error
        if not token:
            raise InputError(f"token file {args.token_file} is empty")
    if token is None:
        token = os.environ.get(TOKEN_VARIABLE) or None
    if token is not None and not (token.isascii() and token.isprintable()):
        raise InputError("the token must be one line of printable ASCII (it is sent as an HTTP header)")
    return token


def open_encoder(args: argparse.Namespace, token: str | None, cache_bytes: int = 0) -> RemoteTextEncoder:
    """The client every command opens from its encoder flags: --encoder with its TLS files read, and the served
    model --encoder-model names (None: the one that fits); a malformed replica list is bad input (exit 2)."""
    from diffusion_client.encoder_client.client import RemoteTextEncoder

    try:
        encoder = RemoteTextEncoder(
            args.encoder,
            timeout=args.timeout,
            connect_timeout=args.connect_timeout,
            token=token,
            tls=args.tls,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            cache_bytes=cache_bytes,
        )
    except ValueError as error:
        raise InputError(f"--encoder {args.encoder}: {error}") from None
    encoder.model = getattr(args, "encoder_model", None)
    return encoder
