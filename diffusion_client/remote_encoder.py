"""`RemoteTextEncoder`: FLUX.2 prompt embeddings from a flux2-encoder server, ready for `Flux2Pipeline`.

encoder = RemoteTextEncoder("encoder-box:50051")
image = pipe(prompt_embeds=encoder.encode("a cat"), ...).images[0]
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import torch

from diffusion_client.errors import (
    BadReplyError,
    ClientError,
    EncoderFailedError,
    EncoderRejectedError,
    EncoderTimeoutError,
    EncoderUnavailableError,
    ModelMismatchError,
)
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import TensorMeta, WireFormatError, decode_tensor

T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
CLIENT_MISTAKES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclass(frozen=True)
class RemoteEncoderInfo:
    """The server's GetInfo reply, as plain Python."""

    model_name: str
    hidden_size: int
    num_layers: int
    max_layer: int
    default_hidden_state_layers: tuple[int, ...]
    max_sequence_length: int
    dtype: str
    device: str
    fingerprint: str
    server_version: str
    max_prompts_per_request: int

    def embedding_dim(self, layers: Sequence[int] = DEFAULT_HIDDEN_STATE_LAYERS) -> int:
        return len(layers) * self.hidden_size


class RemoteTextEncoder:
    """A client for `flux2.encoder.v1.TextEncoder` with deadlines, retries and verified replies.

    Args:
        target: `host:port` of the server.
        timeout: deadline in seconds for each call, retries included.
        token: sent as `authorization: Bearer <token>` for servers behind an authenticating proxy.
        retries: extra attempts when the server is UNAVAILABLE or RESOURCE_EXHAUSTED (nothing else is retried).
        backoff_s: first retry delay; doubles each attempt, with jitter.
        expected_fingerprint: refuse (`ModelMismatchError`) a server whose weights fingerprint does not
            start with this, to pin a deployment to one model.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 60.0,
        token: str | None = None,
        retries: int = 3,
        backoff_s: float = 0.25,
        channel_options: Sequence[tuple[str, Any]] = (),
        expected_fingerprint: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(target, options=list(channel_options))
        self._stub = encoder_pb2_grpc.TextEncoderStub(self._channel)
        self._info: RemoteEncoderInfo | None = None
        self._expected_fingerprint = expected_fingerprint

    def __enter__(self) -> RemoteTextEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def info(self) -> RemoteEncoderInfo:
        """The server's model description (fetched once, then cached)."""
        if self._info is None:
            reply = self._call(lambda options: self._stub.GetInfo(encoder_pb2.GetInfoRequest(), **options))
            self._info = RemoteEncoderInfo(
                model_name=reply.model_name,
                hidden_size=reply.hidden_size,
                num_layers=reply.num_layers,
                max_layer=reply.max_layer,
                default_hidden_state_layers=tuple(reply.default_hidden_state_layers),
                max_sequence_length=reply.max_sequence_length,
                dtype=reply.dtype,
                device=reply.device,
                fingerprint=reply.fingerprint,
                server_version=reply.server_version,
                max_prompts_per_request=reply.max_prompts_per_request,
            )
        expected = self._expected_fingerprint
        if expected and not self._info.fingerprint.startswith(expected):
            raise ModelMismatchError(
                f"the encoder at {self.target} serves weights {self._info.fingerprint[:16]}, "
                f"not the expected {expected[:16]}; it runs a different model"
            )
        return self._info

    def check_fits(self, joint_attention_dim: int, layers: Sequence[int] = DEFAULT_HIDDEN_STATE_LAYERS) -> None:
        """Raise `ModelMismatchError` unless these layers' embeddings fit a transformer of that width."""
        info = self.info()
        produced = info.embedding_dim(layers)
        if produced != joint_attention_dim:
            raise ModelMismatchError(
                f"the encoder at {self.target} serves {info.model_name} (hidden size {info.hidden_size} x "
                f"{len(layers)} layers = {produced}), but this transformer expects {joint_attention_dim}; "
                "point --encoder at a server running the same FLUX.2 model"
            )
        if max(layers) > info.max_layer:
            raise ModelMismatchError(
                f"the encoder at {self.target} loaded only {info.max_layer} layers but layer {max(layers)} "
                "is needed; restart it with a larger --max-layer"
            )

    def encode(
        self,
        prompts: str | Sequence[str],
        *,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
        layers: Sequence[int] = DEFAULT_HIDDEN_STATE_LAYERS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """`prompt_embeds` `[B, max_sequence_length, len(layers) * hidden]`, on `device` in `dtype` if given."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        request = encoder_pb2.EncodeRequest(
            prompts=prompts, max_sequence_length=max_sequence_length, hidden_state_layers=list(layers)
        )
        if self._expected_fingerprint:
            self.info()
        embeds = self._call(lambda options: self._receive(request, options))
        expected = (len(prompts), max_sequence_length)
        if tuple(embeds.shape[:2]) != expected:
            raise BadReplyError(f"server returned shape {list(embeds.shape)}, expected {list(expected)} + [dim]")
        if device is not None or dtype is not None:
            embeds = embeds.to(device=device, dtype=dtype)
        return embeds

    def _receive(self, request: encoder_pb2.EncodeRequest, options: dict[str, Any]) -> torch.Tensor:
        replies = self._stub.Encode(request, **options)
        first = next(replies, None)
        if first is None or first.WhichOneof("part") != "header":
            raise BadReplyError(f"the encoder at {self.target} sent no header; is it a flux2-encoder server?")
        header = first.header
        meta = TensorMeta(header.dtype, tuple(header.shape), header.byte_length, header.crc32)
        try:
            return decode_tensor(meta, (reply.chunk for reply in replies))
        except WireFormatError as error:
            raise BadReplyError(f"bad reply from the encoder at {self.target}: {error}") from error

    def _call_options(self, deadline: float) -> dict[str, Any]:
        return {"timeout": max(deadline - time.monotonic(), 0.001), "metadata": self._metadata}

    def _call(self, call: Callable[[dict[str, Any]], T]) -> T:
        """Run `call` within one overall deadline, retrying only UNAVAILABLE and RESOURCE_EXHAUSTED.

        Both mean the server did no work for this request, so trying again is safe; everything else
        is mapped to one `ClientError`.
        """
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                return call(self._call_options(deadline))
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                delay = self.backoff_s * 2**attempt * random.uniform(0.8, 1.2)
                if code in RETRYABLE and attempt < self.retries and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    continue
                raise self._client_error(error, code) from None
        raise AssertionError("unreachable")

    def _client_error(self, error: grpc.RpcError, code: grpc.StatusCode) -> ClientError:
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        if code == grpc.StatusCode.UNAVAILABLE:
            return EncoderUnavailableError(
                f"cannot reach the encoder at {self.target} ({_first_line(details)}); "
                "check the address and that `flux2-encoder serve` is running and reports SERVING"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return EncoderUnavailableError(f"the encoder at {self.target} stayed overloaded: {_first_line(details)}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EncoderTimeoutError(
                f"the encoder at {self.target} did not answer within {self.timeout:g} s; "
                "it may be overloaded, or raise the timeout"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return EncoderRejectedError(f"the encoder at {self.target} needs a token: {details}", code.name)
        if code in CLIENT_MISTAKES:
            return EncoderRejectedError(f"the encoder at {self.target} refused: {details} ({code.name})", code.name)
        return EncoderFailedError(
            f"the encoder at {self.target} failed: {_first_line(details)} ({code.name}); see the server log"
        )


def _first_line(text: str | None) -> str:
    return (text or "no details").strip().splitlines()[0]
