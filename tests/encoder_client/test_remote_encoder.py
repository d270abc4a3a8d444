"""`RemoteTextEncoder`: embeddings ready for `Flux2Pipeline`, deadlines, retries, verified replies, upsampling."""

from __future__ import annotations

import dataclasses
import resource
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_client import RemoteTextEncoder
from diffusion_client.errors import (
    BadReplyError,
    ClientError,
    EncoderCallError,
    EncoderError,
    EncoderFailedError,
    EncoderRejectedError,
    EncoderTimeoutError,
    EncoderUnavailableError,
    InputError,
    ModelMismatchError,
    TransportError,
)
from shared.protocol import encoder_pb2
from shared.server_info import ServerInfo
from shared.wire import tensor_to_responses
from tests.support.fake_encoder import TINY_INFO, TINY_UPSAMPLING_INFO, FakeEncoder, embeds_for, fake_server
from tests.support.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE, start_server


def test_encode_returns_diffusers_prompt_embeds_in_the_requested_dtype(encoder_server, diffusers_embeds):
    with RemoteTextEncoder(encoder_server.target) as encoder:
        embeds = encoder.encode(["a paper boat", "a glass bird"])
        as_bf16 = encoder.encode("a paper boat", dtype=torch.bfloat16)
    assert torch.equal(embeds, diffusers_embeds(["a paper boat", "a glass bird"]))
    assert as_bf16.dtype == torch.bfloat16 and as_bf16.shape == (1, 512, TINY_EMBED_DIM)


def test_info_is_the_shared_server_info(encoder_server):
    with RemoteTextEncoder(encoder_server.target) as encoder:
        info = encoder.info()
    assert isinstance(info, ServerInfo)
    assert (info.hidden_size, info.max_layer, info.embedding_dim()) == (TINY_HIDDEN_SIZE, 34, TINY_EMBED_DIM)


def test_error_classes_form_the_documented_tree():
    assert issubclass(EncoderUnavailableError, TransportError) and issubclass(EncoderTimeoutError, TransportError)
    assert issubclass(TransportError, EncoderCallError)
    assert issubclass(EncoderRejectedError, EncoderCallError) and issubclass(EncoderFailedError, EncoderCallError)
    assert issubclass(EncoderCallError, EncoderError)
    assert issubclass(BadReplyError, EncoderError) and issubclass(ModelMismatchError, EncoderError)
    assert issubclass(EncoderError, ClientError) and issubclass(InputError, ClientError)
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
    encoder = RemoteTextEncoder(f"127.0.0.1:{port}", timeout=60, connect_timeout=30)  # a server not yet listening
    caller = threading.Thread(target=lambda: results.append(encoder.encode("late server")))
    caller.start()
    time.sleep(3)  # longer than the old fixed three retries lasted
    with start_server(tiny_snapshot, port=port):
        caller.join(60)
    encoder.close()
    assert results and results[0].shape == (1, 512, TINY_EMBED_DIM)


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
        assert encoder.encode("x").shape == (1, 512, TINY_EMBED_DIM)
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


def test_a_prompt_longer_than_the_server_takes_is_refused_before_it_is_sent(tiny_snapshot):
    with start_server(tiny_snapshot, max_prompt_chars=64) as server:
        with RemoteTextEncoder(server.target, timeout=30) as encoder:
            started = time.monotonic()
            with pytest.raises(InputError) as error:  # ours, not the server's INVALID_ARGUMENT: never sent
                encoder.encode(["a short prompt", "y" * 65])
            seconds = time.monotonic() - started
            assert encoder.encode("y" * 64).shape == (1, 512, TINY_EMBED_DIM)  # at the limit: sent and answered
    assert str(error.value) == (
        f"prompt 1 is 65 characters; the encoder at {server.target} takes at most 64 "
        "(it uses only the first 512 tokens anyway)"
    )
    assert seconds < 5, seconds


def test_more_prompts_than_the_server_takes_in_one_request_are_refused_before_they_are_sent():
    servicer = FakeEncoder(info=dataclasses.replace(TINY_INFO, max_prompts_per_request=2))
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(InputError, match=f"3 prompts in one request; the encoder at {target} takes at most 2"):
            encoder.encode(["a", "b", "c"])
        assert encoder.encode(["a", "b"]).shape[0] == 2
    assert servicer.calls == 1  # the two prompts'; the three were never sent


def test_a_request_over_the_servers_message_limit_fails_at_once_and_is_not_retried_as_overload():
    servicer = FakeEncoder()  # it states the real server's 20,000 characters; its gRPC server takes 4 KiB messages
    with fake_server(servicer, options=[("grpc.max_receive_message_length", 4096)]) as target:
        with RemoteTextEncoder(target, timeout=30) as encoder:
            started = time.monotonic()
            with pytest.raises(EncoderRejectedError) as error:
                encoder.encode("z" * 10_000)
            seconds = time.monotonic() - started
            assert encoder.encode("a short prompt").shape == (1, 512, TINY_EMBED_DIM)  # the server still serves
    assert seconds < 3, seconds  # not retried until the 30 s deadline
    assert servicer.calls == 1  # the short prompt's; the long one never reached the handler
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = str(error.value)
    assert message.startswith(f"the request is larger than what the encoder at {target} takes (")
    assert "larger than max (100" in message and message.endswith("; shorten the prompt")
    assert "overloaded" not in message


def test_a_request_over_this_clients_own_send_limit_fails_at_once(encoder_server):
    options = [("grpc.max_send_message_length", 4096)]
    with RemoteTextEncoder(encoder_server.target, timeout=30, channel_options=options) as encoder:
        started = time.monotonic()
        with pytest.raises(EncoderRejectedError, match="this client's limit for the encoder at"):
            encoder.encode("z" * 10_000)
        assert time.monotonic() - started < 3


def test_a_reply_over_this_clients_receive_limit_is_a_bad_reply_not_retried():
    servicer = FakeEncoder()
    options = [("grpc.max_receive_message_length", 16 * 1024)]
    with fake_server(servicer) as target, RemoteTextEncoder(target, timeout=30, channel_options=options) as encoder:
        started = time.monotonic()
        with pytest.raises(BadReplyError, match="is larger than this client takes"):
            encoder.encode("x")
        assert time.monotonic() - started < 3
    assert servicer.calls == 1


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
    info = dataclasses.replace(TINY_INFO, model_name=HOSTILE_TEXT, hidden_size=2 * TINY_HIDDEN_SIZE)
    with fake_server(FakeEncoder(info=info)) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(ModelMismatchError) as error:
            encoder.check_fits(TINY_EMBED_DIM)
    assert_one_printable_line(str(error.value))
    assert f"expects {TINY_EMBED_DIM}" in str(error.value) and "--encoder" not in str(error.value)


def serve_reply(reply) -> FakeEncoder:  # type: ignore[no-untyped-def]
    return FakeEncoder(lambda request, context: reply(request))


def test_corrupted_reply_raises_bad_reply_error():
    def flipped_checksum(request):  # type: ignore[no-untyped-def]
        header, *chunks = embeds_for(request)
        header.header.row_crc32c[0] ^= 1
        return [header, *chunks]

    with fake_server(serve_reply(flipped_checksum)) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(BadReplyError, match="checksum") as error:
            encoder.encode("x")
    assert error.value.target == target


def test_reply_header_announcing_8_gib_is_refused_before_allocating():
    def huge_header(request):  # type: ignore[no-untyped-def]
        shape = [1, 512, 4 * 1024 * 1024]  # float32: 8 GiB
        header = encoder_pb2.TensorHeader(dtype="float32", shape=shape, byte_length=2**33, row_crc32c=[0])
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
        return tensor_to_responses(
            torch.zeros(2, 512, TINY_EMBED_DIM), hidden_state_layers=[10, 20, 30], max_sequence_length=512
        )

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
        assert encoder.encode("x").shape == (1, 512, TINY_EMBED_DIM)


# Prompt upsampling. The tiny model has random weights, so its rewrites are gibberish; a few tokens are plenty.
FEW_TOKENS = 8


@pytest.fixture(scope="module")
def upsampling_server(tiny_snapshot):  # type: ignore[no-untyped-def]
    with start_server(tiny_snapshot, enable_upsampling=True) as server:
        yield server


def noise_image(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0, format: str | None = None) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=format)
    return path


def test_upsample_returns_one_rewrite_per_prompt_and_the_same_ones_for_the_same_seed(upsampling_server):
    prompts = ["a paper boat", "a glass bird"]
    with RemoteTextEncoder(upsampling_server.target) as encoder:
        first = encoder.upsample(prompts, seed=7, max_new_tokens=FEW_TOKENS)
        again = encoder.upsample(prompts, seed=7, max_new_tokens=FEW_TOKENS)
    assert len(first) == 2 and all(isinstance(prompt, str) and prompt for prompt in first)
    assert first != prompts
    assert again == first


def test_upsample_reference_images_as_paths_and_as_bytes_give_the_same_rewrite(upsampling_server, tmp_path):
    references = [noise_image(tmp_path / "a.png"), noise_image(tmp_path / "b.jpg", (48, 80), seed=1)]
    with RemoteTextEncoder(upsampling_server.target) as encoder:
        from_paths = encoder.upsample("make it blue", [references], seed=3, max_new_tokens=FEW_TOKENS)
        from_bytes = encoder.upsample(
            ["make it blue"], [[path.read_bytes() for path in references]], seed=3, max_new_tokens=FEW_TOKENS
        )
    assert len(from_paths) == 1 and from_paths == from_bytes


def test_upsample_on_a_server_without_upsampling_is_refused_naming_the_flag(encoder_server):
    with RemoteTextEncoder(encoder_server.target) as encoder, pytest.raises(EncoderRejectedError) as error:
        encoder.upsample("a cat", max_new_tokens=FEW_TOKENS)
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--enable-upsampling" in str(error.value)


def test_upsample_reference_files_are_sent_byte_for_byte(tmp_path):
    reference = noise_image(tmp_path / "ref.jpg", (40, 56))
    servicer = FakeEncoder(info=TINY_UPSAMPLING_INFO)
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        assert encoder.upsample("edit", [[reference]], temperature=0.5, seed=9) == ["edit (upsampled)"]
    (request,) = servicer.upsample_requests
    assert list(request.prompts[0].images) == [reference.read_bytes()]
    assert (request.temperature, request.max_new_tokens, request.seed) == (0.5, 512, 9)


LIMITED = dataclasses.replace(
    TINY_UPSAMPLING_INFO, max_upsample_prompts=2, max_upsample_images=2, max_upsample_image_bytes=4096
)


@pytest.mark.parametrize(
    "call,message",
    [
        ({"prompts": ["a"] * 3}, "3 prompts to upsample; the encoder takes at most 2"),
        ({"images": [["a.png"] * 3]}, "3 reference images to upsample with; the encoder takes at most 2"),
        ({"images": [["big.png"]]}, "bytes; the encoder takes at most 4,096 bytes per image"),
        ({"images": [["a.bmp"]]}, "reference image a.bmp is BMP; upsampling takes PNG, JPEG or WebP"),
        ({"images": [[b"not an image"]]}, "reference image 0 of prompt 0 is not a PNG, JPEG or WebP image"),
        ({"images": [["missing.png"]]}, "reference image missing.png does not exist"),
        ({"images": ["a.png"]}, "images[0] must be a list of reference images for prompt 0"),
        ({"prompts": ["a", "b"], "images": [["a.png"], []]}, "either every prompt has reference images or none"),
        ({"temperature": 0}, "upsample temperature must be a number between 0.01 and 2"),
        ({"temperature": float("nan")}, "upsample temperature must be a number between 0.01 and 2"),
        ({"temperature": 3}, "upsample temperature must be a number between 0.01 and 2"),
        ({"max_new_tokens": 1025}, "max_new_tokens 1025 is more than the encoder allows; use 1 to 1024"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a whole number of at least 1"),
        ({"seed": -1}, "seed must be None or a whole number"),
    ],
    ids=[
        "prompts",
        "images",
        "bytes",
        "bmp",
        "not-an-image",
        "missing",
        "flat-images",
        "mixed",
        "temperature-0",
        "temperature-nan",
        "temperature-3",
        "tokens-over",
        "tokens-0",
        "seed",
    ],
)
def test_upsample_request_outside_the_limits_raises_input_error_without_a_call(tmp_path, monkeypatch, call, message):
    monkeypatch.chdir(tmp_path)
    noise_image(tmp_path / "a.png", (16, 16))
    noise_image(tmp_path / "big.png", (64, 64))
    noise_image(tmp_path / "a.bmp", (16, 16))
    servicer = FakeEncoder(info=LIMITED)
    arguments = {"prompts": "a cat", **call}
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(InputError) as error:
            encoder.upsample(arguments.pop("prompts"), **arguments)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert servicer.upsample_requests == []


@pytest.mark.parametrize(
    "reply,message",
    [
        (lambda request: [], "0 upsampled prompts for 2 sent"),
        (lambda request: ["one", "two", "three"], "3 upsampled prompts for 2 sent"),
        (lambda request: ["short", "x" * (64 * FEW_TOKENS + 1)], "upsampled prompt 1 has 513 characters"),
    ],
    ids=["none", "one-too-many", "too-long"],
)
def test_upsample_reply_that_does_not_answer_each_prompt_is_a_bad_reply(reply, message):
    servicer = FakeEncoder(info=TINY_UPSAMPLING_INFO, upsample_reply=lambda request, _context: reply(request))
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(BadReplyError) as error:
            encoder.upsample(["a", "b"], max_new_tokens=FEW_TOKENS)
    assert error.value.target == target
    assert message in str(error.value)
