"""How `RemoteTextEncoder` makes a call: by a deadline, retrying what is safe to retry (UNAVAILABLE,
RESOURCE_EXHAUSTED, a stream broken mid-reply) with capped, jittered backoff, and mapping every other gRPC status to
one `EncoderCallError` whose message says what to fix. Until a server has answered once, attempts stop at
`connect_timeout` and the error says why nothing answered (`dialing.unreached_error`)."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from diffusion_client.encoder_client.dialing import Failure, more_telling, server_answered, unreached_error
from diffusion_client.errors import (
    BadReplyError,
    EncoderCallError,
    EncoderError,
    EncoderFailedError,
    EncoderRejectedError,
    EncoderTimeoutError,
    EncoderUnavailableError,
    printable_line,
)

T = TypeVar("T")

log = logging.getLogger("diffusion_client.encoder_client.client")

LAST_ATTEMPT_S = 0.1  # the least time left worth one more attempt


# Both mean the server did no work for the request, so trying again is safe.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# A stream cut mid-reply (its replica killed, the connection reset) ends UNAVAILABLE with gRPC 1.85 (measured:
# "Stream removed (Socket closed)", "Stream removed (recvmsg:Connection reset by peer (104))"), but other versions
# and proxies report it as INTERNAL or UNKNOWN in the transport's own words. Those are retried too, on whichever
# replica is up: Encode, GetInfo and a seeded Upsample are idempotent. An INTERNAL the server sent about our
# request never holds these words, and is not retried: repeating a request does not fix a server's bug.
BROKEN_STREAM = re.compile(r"stream removed|rst_stream|socket closed|connection reset|goaway", re.IGNORECASE)
BROKEN_STREAM_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
# Our TLS settings cannot work with this server (its certificate is not from our CA, does not name the host, or
# the server speaks plain text): trying again cannot help, so it fails at once. A server that refuses *us* (no
# client certificate for an mTLS server, plain text to a TLS server) only closes the connection, which looks like
# a server going away; as no server has answered yet, that fails after `connect_timeout`, pointing at TLS.
TLS_REFUSED = re.compile(
    r"handshake failed.*SSL_ERROR_SSL|verification check failed|not in peer certificate", re.IGNORECASE
)
# A message over a gRPC size limit ends RESOURCE_EXHAUSTED too (gRPC 1.85: "SERVER: Received message larger than max
# (N vs. M)", "CLIENT: Sent message larger than max ...", or a reply too large for us: "CLIENT: Received ..."), but
# sending it again is refused again: the request's own failure, not an overloaded server.
TOO_LARGE = re.compile(r"(sent|received) message larger than max", re.IGNORECASE)
REJECTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class RetryingCalls:
    """The call loop of a client with these attributes (`RemoteTextEncoder` sets them)."""

    target: str
    timeout: float
    connect_timeout: float
    retries: int | None
    backoff_s: float
    max_backoff_s: float
    tls: bool
    _reached: bool
    _closed: bool
    _metadata: tuple[tuple[str, str], ...]

    def _call(self, call: Callable[[dict[str, Any]], T], deadline: float) -> T:
        """Run `call` by `deadline`, retrying UNAVAILABLE and RESOURCE_EXHAUSTED with capped, jittered backoff.

        A stream broken mid-reply counts as UNAVAILABLE (`BROKEN_STREAM`); a TLS handshake our settings cannot
        pass and a message over a size limit (`TOO_LARGE`) are not retried. Until a server has answered once,
        attempts stop at `connect_timeout` (so a listener that never speaks is noticed too) and the error says why
        nothing answered; after that, retries go on until the deadline (or `retries` runs out). Every other status
        is mapped at once to one `EncoderCallError`. With replicas, each attempt goes to one that is up.
        """
        attempt = 0
        unavailable: Failure | None = None  # the last retryable failure
        unreached: Failure | None = None  # the most telling failure to connect, while no server has answered
        connect_by = min(deadline, time.monotonic() + self.connect_timeout)
        while True:
            until = deadline if self._reached else connect_by
            try:
                reply = call({"timeout": max(until - time.monotonic(), 0.001), "metadata": self._metadata})
                self._reached = True
                return reply
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                details: str | None = error.details() if isinstance(error, grpc.Call) else str(error)
                if code in BROKEN_STREAM_CODES and BROKEN_STREAM.search(details or ""):
                    code = grpc.StatusCode.UNAVAILABLE  # the transport broke, the server did not fail
                elif code == grpc.StatusCode.CANCELLED and not self._closed:
                    # We never cancel a call we still wait for: a server shutting down under it did (measured:
                    # details "CANCELLED" when a replica stops as the call starts). Nothing ran for us.
                    code = grpc.StatusCode.UNAVAILABLE
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and TOO_LARGE.search(details or ""):
                    raise self._too_large_error(code, details) from None
                self._reached = self._reached or server_answered(code, details)
                if not self._reached:
                    unreached = more_telling(unreached, (code, details))
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    if not self._reached:
                        raise self._unreached_error(unreached or (code, details)) from None
                    if until < deadline:
                        continue  # stopped at connect_timeout, but another call has reached a server since
                    if unavailable is not None:
                        code, details = unavailable  # the deadline came while the server was still out of reach
                if code not in RETRYABLE or TLS_REFUSED.search(details or ""):
                    raise self._call_error(code, details) from None
                log.debug("encoder call to %s failed (%s: %s); retrying", self.target, code.name, details)
                unavailable = (code, details)
                reached = self._reached
                remaining = (deadline if reached else connect_by) - time.monotonic()
                out_of_attempts = self.retries is not None and attempt >= self.retries
                if out_of_attempts or remaining <= LAST_ATTEMPT_S:
                    if not reached:
                        raise self._unreached_error(unreached or (code, details)) from None
                    raise self._call_error(code, details) from None
                delay = min(self.backoff_s * 2**attempt, self.max_backoff_s) * random.uniform(0.5, 1.0)
                time.sleep(min(delay, remaining - LAST_ATTEMPT_S))  # the last try comes just before the deadline
                attempt += 1

    def _too_large_error(self, code: grpc.StatusCode, details: str | None) -> EncoderError:
        """A message over a gRPC size limit, in one line saying whose limit and which message."""
        said, target, text = printable_line(details or "no details"), self.target, (details or "").lower()
        ours, sent = "client:" in text, "sent message" in text
        if ours and not sent:
            return BadReplyError(
                f"a reply from the encoder at {target} is larger than this client takes ({said})", target=target
            )
        if not ours and sent:
            return EncoderFailedError(
                f"the encoder at {target} could not send its reply ({said}); see the server log",
                target=target,
                code=code,
            )
        whose = f"this client's limit for the encoder at {target}" if ours else f"what the encoder at {target} takes"
        return EncoderRejectedError(
            f"the request is larger than {whose} ({said}); shorten the prompt", target=target, code=code
        )

    def _unreached_error(self, failure: Failure) -> EncoderUnavailableError:
        return unreached_error(self.target, failure, tls=self.tls, waited_s=min(self.timeout, self.connect_timeout))

    def _call_error(self, code: grpc.StatusCode, details: str | None) -> EncoderCallError:
        said = printable_line(details or "no details")
        target = self.target
        if code == grpc.StatusCode.UNAVAILABLE and TLS_REFUSED.search(details or ""):
            return EncoderUnavailableError(
                f"TLS with the encoder at {target} failed ({said}); check --tls-ca (the CA that signed the "
                "server's certificate, which must name the host dialled) and that the server uses TLS",
                target=target,
                code=code,
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            tls_hint = (
                "if the server requires client certificates, give --tls-cert and --tls-key"
                if self.tls
                else "if the server uses TLS, give --tls-ca (or --tls for a publicly signed certificate)"
            )
            return EncoderUnavailableError(
                f"cannot reach the encoder at {target} ({said}); "
                f"check the address and that `flux2-encoder serve` is running and reports SERVING; {tls_hint}",
                target=target,
                code=code,
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return EncoderUnavailableError(
                f"the encoder at {target} stayed overloaded until the deadline ({self.timeout:g} s): {said}",
                target=target,
                code=code,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EncoderTimeoutError(
                f"the encoder at {target} did not answer within {self.timeout:g} s; "
                "it may be overloaded, or raise the timeout",
                target=target,
                code=code,
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return EncoderRejectedError(f"the encoder at {target} needs a token: {said}", target=target, code=code)
        if code in REJECTED:
            return EncoderRejectedError(
                f"the encoder at {target} refused: {said} ({code.name})", target=target, code=code
            )
        return EncoderFailedError(
            f"the encoder at {target} failed: {said} ({code.name}); see the server log", target=target, code=code
        )
