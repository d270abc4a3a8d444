"""`RemoteTextEncoder`: embeddings ready for `Flux2Pipeline`, deadlines, retries, and verified replies."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import torch

from diffusion_client import RemoteTextEncoder
from diffusion_client.errors import (
    BadReplyError,
    EncoderFailedError,
    EncoderRejectedError,
    EncoderTimeoutError,
    ModelMismatchError,
)
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import encode_tensor
from tests.helpers import start_server


def test_encode_returns_diffusers_prompt_embeds_in_the_requested_dtype(encoder_server, diffusers_embeds):
    with RemoteTextEncoder(encoder_server.target) as encoder:
        embeds = encoder.encode(["a paper boat", "a glass bird"])
        as_bf16 = encoder.encode("a paper boat", dtype=torch.bfloat16)
    assert torch.equal(embeds, diffusers_embeds(["a paper boat", "a glass bird"]))
    assert as_bf16.dtype == torch.bfloat16 and as_bf16.shape == (1, 512, 96)


def test_info_describes_the_server_model(encoder_server):
    with RemoteTextEncoder(encoder_server.target) as encoder:
        info = encoder.info()
    assert (info.hidden_size, info.max_layer, info.embedding_dim()) == (32, 34, 96)


def test_unavailable_server_is_retried_until_it_comes_up(tiny_snapshot):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results: list[torch.Tensor] = []
    encoder = RemoteTextEncoder(f"127.0.0.1:{port}", retries=8, backoff_s=0.2, timeout=30)
    caller = threading.Thread(target=lambda: results.append(encoder.encode("late server")))
    caller.start()
    with start_server(tiny_snapshot, port=port):
        caller.join(60)
    encoder.close()
    assert results and results[0].shape == (1, 512, 96)


def test_deadline_raises_timeout_error(tiny_snapshot):
    with start_server(tiny_snapshot, batch_wait_ms=5000, max_batch_size=4) as server:
        with RemoteTextEncoder(server.target, timeout=0.5) as encoder, pytest.raises(EncoderTimeoutError) as error:
            encoder.encode("slow")
    assert "did not answer within 0.5 s" in str(error.value)


def test_refused_request_keeps_the_status_and_server_message(encoder_server):
    with RemoteTextEncoder(encoder_server.target) as encoder, pytest.raises(EncoderRejectedError) as error:
        encoder.encode("x", layers=(99,))
    assert error.value.status == "INVALID_ARGUMENT"
    assert "use 1 to 34" in str(error.value)


class CorruptingEncoder(encoder_pb2_grpc.TextEncoderServicer):
    """A misbehaving peer: announces one checksum and sends different bytes."""

    def Encode(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        meta, chunks = encode_tensor(torch.zeros(1, 512, 96))
        header = encoder_pb2.TensorHeader(
            dtype=meta.dtype, shape=list(meta.shape), byte_length=meta.byte_length, crc32=meta.crc32 ^ 1
        )
        yield encoder_pb2.EncodeResponse(header=header)
        for chunk in chunks:
            yield encoder_pb2.EncodeResponse(chunk=chunk)


def test_corrupted_reply_raises_bad_reply_error():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    encoder_pb2_grpc.add_TextEncoderServicer_to_server(CorruptingEncoder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RemoteTextEncoder(f"127.0.0.1:{port}") as encoder, pytest.raises(BadReplyError, match="checksum"):
            encoder.encode("x")
    finally:
        server.stop(0)


def test_pinned_fingerprint_refuses_a_server_with_other_weights(encoder_server):
    with RemoteTextEncoder(encoder_server.target, expected_fingerprint="0" * 16) as encoder:
        for _ in range(2):  # refused every time, not only on the first call
            with pytest.raises(ModelMismatchError, match="different model"):
                encoder.encode("x")
    fingerprint = RemoteTextEncoder(encoder_server.target).info().fingerprint
    with RemoteTextEncoder(encoder_server.target, expected_fingerprint=fingerprint[:12]) as encoder:
        assert encoder.encode("x").shape == (1, 512, 96)


class ScriptedEncoder(encoder_pb2_grpc.TextEncoderServicer):
    """A peer that fails with the given status codes first, then answers correctly."""

    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def Encode(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls += 1
        if self.failures:
            context.abort(self.failures.pop(0), "scripted failure")
        meta, chunks = encode_tensor(torch.zeros(len(request.prompts), 512, 96))
        header = encoder_pb2.TensorHeader(
            dtype=meta.dtype, shape=list(meta.shape), byte_length=meta.byte_length, crc32=meta.crc32
        )
        yield encoder_pb2.EncodeResponse(header=header)
        for chunk in chunks:
            yield encoder_pb2.EncodeResponse(chunk=chunk)


@contextlib.contextmanager
def scripted_server(failures: list[grpc.StatusCode]) -> Iterator[tuple[str, ScriptedEncoder]]:
    servicer = ScriptedEncoder(failures)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    encoder_pb2_grpc.add_TextEncoderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


def test_overloaded_server_is_retried_with_backoff():
    with scripted_server([grpc.StatusCode.RESOURCE_EXHAUSTED] * 2) as (target, servicer):
        with RemoteTextEncoder(target, backoff_s=0.05) as encoder:
            assert encoder.encode("x").shape == (1, 512, 96)
        assert servicer.calls == 3


def test_server_failure_is_not_retried_and_exits_3():
    with scripted_server([grpc.StatusCode.INTERNAL]) as (target, servicer):
        with RemoteTextEncoder(target, backoff_s=0.05) as encoder, pytest.raises(EncoderFailedError) as error:
            encoder.encode("x")
        assert servicer.calls == 1
    assert error.value.exit_code == 3
    assert "see the server log" in str(error.value)
