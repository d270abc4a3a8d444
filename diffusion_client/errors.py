"""Client exceptions: one tree, each class carrying what it concerns; `str(error)` is one printable line.

ClientError                         base; str() is one printable line
├── EncoderError                    concerns one server (or its replicas): .target
│   ├── EncoderCallError            the call ended with a gRPC status: .code (grpc.StatusCode)
│   │   ├── TransportError          nothing was computed for us; may be retried
│   │   │   ├── EncoderUnavailableError   UNAVAILABLE (also failed TLS, never reached) or RESOURCE_EXHAUSTED (busy)
│   │   │   └── EncoderTimeoutError       DEADLINE_EXCEEDED
│   │   ├── EncoderRejectedError    INVALID_ARGUMENT, UNAUTHENTICATED, ..., a request over a gRPC message size limit
│   │   └── EncoderFailedError      INTERNAL, UNKNOWN, ... (server failed on a valid request)
│   ├── BadReplyError               reply failed its checks (header dtype/shape, bytes, checksum; upsampled prompts)
│   └── ModelMismatchError          server's model does not fit this transformer, or not the pinned fingerprint
│       └── PipelineMismatchError   no model it serves feeds this pipeline (a klein DiT, a dev-only server)
└── InputError                      bad job settings, reference image, prompts file, output path, device, TLS file

Exit codes are the CLI's business (`diffusion_client.generation.cli.EXIT_CODES`), not these classes'. This module
imports nothing heavy (not even grpc), so `flux2-generate --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.printable import MESSAGE_LIMIT, SERVER_TEXT_LIMIT, printable_line

if TYPE_CHECKING:
    import grpc

__all__ = ["MESSAGE_LIMIT", "SERVER_TEXT_LIMIT", "printable_line"]  # re-exported for the client's users


class ClientError(Exception):
    """Base class; `str(error)` is one printable line saying what went wrong and what to do."""

    def __str__(self) -> str:
        return printable_line(super().__str__(), MESSAGE_LIMIT)


class EncoderError(ClientError):
    """Something about one encoder server, named by `target` (`host:port`, or the replicas as given)."""

    def __init__(self, message: str, *, target: str) -> None:
        super().__init__(message)
        self.target = target


class EncoderCallError(EncoderError):
    """A call ended with a gRPC status other than OK; `code` is that `grpc.StatusCode`."""

    def __init__(self, message: str, *, target: str, code: grpc.StatusCode) -> None:
        super().__init__(message, target=target)
        self.code = code


class TransportError(EncoderCallError):
    """The server computed nothing for this call, so trying again later is safe."""


class EncoderUnavailableError(TransportError):
    """Unreachable (UNAVAILABLE) or overloaded (RESOURCE_EXHAUSTED) until the deadline, or TLS that cannot work.

    A target where no server has answered yet fails sooner, after `connect_timeout`, saying why: nothing
    listening, something that is not gRPC, or TLS the server refuses.
    """


class EncoderTimeoutError(TransportError):
    """The call passed its deadline (DEADLINE_EXCEEDED)."""


class EncoderRejectedError(EncoderCallError):
    """The server refused the request: bad arguments, no or wrong token, a message larger than it (or this client)
    takes (RESOURCE_EXHAUSTED, but never retried: the same request is refused again), ..."""


class EncoderFailedError(EncoderCallError):
    """The server failed on a valid request (INTERNAL, UNKNOWN, ...); its log says why."""


class BadReplyError(EncoderError):
    """The reply is not what was asked for: header dtype or shape, byte count or checksum; upsampled prompts."""


class ModelMismatchError(EncoderError):
    """The server's model cannot feed this transformer, or is not the pinned set of weights."""


class PipelineMismatchError(ModelMismatchError):
    """No model the server serves feeds this pipeline: FLUX.2-dev's and klein's text encoders differ."""


class InputError(ClientError):
    """Bad job settings, reference image, prompts file, output path, device, or an unreadable TLS file."""


def failure_text(failure: object) -> str:
    """A failure in words: ours (and messages already made) as they are, anything else named by its type."""
    if isinstance(failure, BaseException) and not isinstance(failure, ClientError):
        return f"unexpected {type(failure).__name__}: {failure}"
    return str(failure)
