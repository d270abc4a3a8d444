"""`RemoteTextEncoder`: embeddings ready for `Flux2Pipeline`, deadlines, retries, and verified replies."""

from __future__ import annotations

import dataclasses
import resource
import socket
import threading
import time

import grpc
import pytest
import torch

from diffusion_client import RemoteEncoderInfo, RemoteTextEncoder
from diffusion_client.errors import (
    BadReplyError,
    ClientError,
    EncoderCallError,
    EncoderError,
    EncoderFailedError,
    EncoderRejectedError,
    EncoderTimeoutError,
    EncoderUnavailableError,
    GenerationInputError,
    InputError,
    ModelMismatchError,
    TransportError,
)
from shared.info import ServerInfo
from shared.protocol import encoder_pb2
from shared.wire import tensor_to_responses
from tests.fake_encoder import TINY_INFO, FakeEncoder, embeds_for, fake_server
from tests.helpers import start_server


def test_encode_returns_diffusers_prompt_embeds_in_the_requested_dtype(encoder_server, diffusers_embeds):
    with RemoteTextEncoder(encoder_server.target) as encoder:
        embeds = encoder.encode(["a paper boat", "a glass bird"])
        as_bf16 = encoder.encode("a paper boat", dtype=torch.bfloat16)
    assert torch.equal(embeds, diffusers_embeds(["a paper boat", "a glass bird"]))
    assert as_bf16.dtype == torch.bfloat16 and as_bf16.shape == (1, 512, 96)


def test_info_is_the_shared_server_info(encoder_server):
    with RemoteTextEncoder(encoder_server.target) as encoder:
        info = encoder.info()
    assert isinstance(info, ServerInfo) and RemoteEncoderInfo is ServerInfo
    assert (info.hidden_size, info.max_layer, info.embedding_dim()) == (32, 34, 96)


def test_error_classes_form_the_documented_tree():
    assert issubclass(EncoderUnavailableError, TransportError) and issubclass(EncoderTimeoutError, TransportError)
    assert issubclass(TransportError, EncoderCallError)
    assert issubclass(EncoderRejectedError, EncoderCallError) and issubclass(EncoderFailedError, EncoderCallError)
    assert issubclass(EncoderCallError, EncoderError)
    assert issubclass(BadReplyError, EncoderError) and issubclass(ModelMismatchError, EncoderError)
    assert issubclass(EncoderError, ClientError) and issubclass(InputError, ClientError)
    assert GenerationInputError is InputError
    assert not hasattr(ClientError, "exit_code")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, -5])
def test_timeout_that_is_not_positive_and_finite_is_refused(timeout):
    with pytest.raises(ValueError, match="positive finite"):
        RemoteTextEncoder("127.0.0.1:1", timeout=timeout)


def test_unavailable_server_is_retried_until_it_comes_up(tiny_snapshot):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results: list[torch.Tensor] = []
    encoder = RemoteTextEncoder(f"127.0.0.1:{port}", timeout=60)
    caller = threading.Thread(target=lambda: results.append(encoder.encode("late server")))
    caller.start()
    time.sleep(3)  # longer than the old fixed three retries lasted
    with start_server(tiny_snapshot, port=port):
        caller.join(60)
    encoder.close()
    assert results and results[0].shape == (1, 512, 96)


def test_overloaded_server_is_retried_until_the_deadline_not_a_fixed_count():
    servicer = FakeEncoder(failures=[grpc.StatusCode.RESOURCE_EXHAUSTED] * 1000, details="queue full")
    with fake_server(servicer) as target, RemoteTextEncoder(target, timeout=3) as encoder:
        started = time.monotonic()
        with pytest.raises(EncoderUnavailableError) as error:
            encoder.encode("x")
        elapsed = time.monotonic() - started
    assert 2.5 <= elapsed <= 4.5, elapsed
    assert servicer.calls >= 5
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "stayed overloaded" in str(error.value) and "queue full" in str(error.value)


def test_overloaded_server_is_retried_with_backoff_then_answers():
    servicer = FakeEncoder(failures=[grpc.StatusCode.RESOURCE_EXHAUSTED] * 2)
    with fake_server(servicer) as target, RemoteTextEncoder(target, backoff_s=0.05) as encoder:
        assert encoder.encode("x").shape == (1, 512, 96)
    assert servicer.calls == 3


def test_retries_can_be_capped_at_a_count():
    servicer = FakeEncoder(failures=[grpc.StatusCode.UNAVAILABLE] * 10)
    with fake_server(servicer) as target, RemoteTextEncoder(target, retries=2, backoff_s=0.01) as encoder:
        with pytest.raises(EncoderUnavailableError):
            encoder.encode("x")
    assert servicer.calls == 3


def test_deadline_raises_timeout_error(tiny_snapshot):
    with start_server(tiny_snapshot, batch_wait_ms=5000, max_batch_size=4) as server:
        with RemoteTextEncoder(server.target, timeout=0.5) as encoder, pytest.raises(EncoderTimeoutError) as error:
            encoder.encode("slow")
    assert "did not answer within 0.5 s" in str(error.value)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_refused_request_keeps_the_status_code_target_and_server_message(encoder_server):
    with RemoteTextEncoder(encoder_server.target) as encoder, pytest.raises(EncoderRejectedError) as error:
        encoder.encode("x", layers=(99,))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.target == encoder_server.target
    assert "use 1 to 34" in str(error.value)


def test_server_failure_is_not_retried():
    servicer = FakeEncoder(failures=[grpc.StatusCode.INTERNAL])
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(EncoderFailedError) as error:
            encoder.encode("x")
    assert servicer.calls == 1
    assert error.value.code == grpc.StatusCode.INTERNAL
    assert "see the server log" in str(error.value)


HOSTILE_TEXT = "\x1b[31mred\x1b[0m\nsecond line\r\x07\x1b]0;title\x07\u202e" + "x" * 5000


def assert_one_printable_line(text: str) -> None:
    assert text.isprintable() and "\x1b" not in text and "[31m" not in text and "title" not in text
    assert len(text) < 600


def test_server_sent_error_text_becomes_one_printable_line():
    servicer = FakeEncoder(failures=[grpc.StatusCode.INVALID_ARGUMENT], details=HOSTILE_TEXT)
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(EncoderRejectedError) as error:
            encoder.encode("x")
    assert_one_printable_line(str(error.value))
    assert "red second line" in str(error.value)


def test_server_sent_model_name_in_a_mismatch_becomes_one_printable_line():
    info = dataclasses.replace(TINY_INFO, model_name=HOSTILE_TEXT, hidden_size=48)
    with fake_server(FakeEncoder(info=info)) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(ModelMismatchError) as error:
            encoder.check_fits(96)
    assert_one_printable_line(str(error.value))
    assert "expects 96" in str(error.value) and "--encoder" not in str(error.value)


def serve_reply(reply) -> FakeEncoder:  # type: ignore[no-untyped-def]
    return FakeEncoder(lambda request, context: reply(request))


def test_corrupted_reply_raises_bad_reply_error():
    def flipped_checksum(request):  # type: ignore[no-untyped-def]
        header, *chunks = embeds_for(request)
        header.header.crc32 ^= 1
        return [header, *chunks]

    with fake_server(serve_reply(flipped_checksum)) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(BadReplyError, match="checksum") as error:
            encoder.encode("x")
    assert error.value.target == target


def test_reply_header_announcing_8_gib_is_refused_before_allocating():
    def huge_header(request):  # type: ignore[no-untyped-def]
        shape = [1, 512, 4 * 1024 * 1024]  # float32: 8 GiB
        header = encoder_pb2.TensorHeader(dtype="float32", shape=shape, byte_length=2**33, crc32=0)
        yield encoder_pb2.EncodeResponse(header=header)
        yield encoder_pb2.EncodeResponse(chunk=b"\0" * 1024)

    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with fake_server(serve_reply(huge_header)) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(BadReplyError, match="asked for"):
            encoder.encode("x")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib
    assert grown_kib < 1024 * 1024, f"peak memory grew by {grown_kib / 1024:.0f} MiB"


def test_reply_with_a_wrong_last_dimension_is_a_bad_reply():
    with fake_server(serve_reply(lambda request: embeds_for(request, width=97))) as target:
        with RemoteTextEncoder(target) as encoder, pytest.raises(BadReplyError, match="97"):
            encoder.encode("x")


def test_reply_in_another_dtype_than_the_server_announced_is_a_bad_reply():
    with fake_server(serve_reply(lambda request: embeds_for(request, dtype=torch.bfloat16))) as target:
        with RemoteTextEncoder(target) as encoder, pytest.raises(BadReplyError, match="bfloat16"):
            encoder.encode("x")


def test_reply_for_another_batch_size_is_a_bad_reply():
    def two_prompts(request):  # type: ignore[no-untyped-def]
        return tensor_to_responses(torch.zeros(2, 512, 96), hidden_state_layers=[10, 20, 30], max_sequence_length=512)

    with fake_server(serve_reply(two_prompts)) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(BadReplyError):
            encoder.encode("x")


def test_pinned_fingerprint_refuses_a_server_with_other_weights(encoder_server):
    with RemoteTextEncoder(encoder_server.target, expected_fingerprint="0" * 16) as encoder:
        for _ in range(2):  # refused every time, not only on the first call
            with pytest.raises(ModelMismatchError, match="different model"):
                encoder.encode("x")
    with RemoteTextEncoder(encoder_server.target) as encoder:
        fingerprint = encoder.info().fingerprint
    with RemoteTextEncoder(encoder_server.target, expected_fingerprint=fingerprint[:12]) as encoder:
        assert encoder.encode("x").shape == (1, 512, 96)
