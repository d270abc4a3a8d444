"""The tensor wire format round-trips exactly and refuses replies that are not what was asked for."""

from __future__ import annotations

import resource

import pytest
import torch

from shared.protocol import encoder_pb2
from shared.wire import MAX_CHUNK_BYTES, TensorSpec, WireFormatError, responses_to_tensor, tensor_to_responses


def _replies(tensor: torch.Tensor, chunk_bytes: int = MAX_CHUNK_BYTES) -> list[encoder_pb2.EncodeResponse]:
    return tensor_to_responses(
        tensor, hidden_state_layers=(10, 20, 30), max_sequence_length=512, chunk_bytes=chunk_bytes
    )


def _spec(tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_is_bitwise_exact(dtype):
    tensor = torch.randn(2, 512, 96).to(dtype)
    replies = _replies(tensor, chunk_bytes=10_000)
    assert len(replies) > 2 and all(len(reply.chunk) <= 10_000 for reply in replies[1:])
    assert torch.equal(responses_to_tensor(replies, _spec(tensor)), tensor)


def test_header_records_layers_and_length():
    header = _replies(torch.ones(1, 4, 6))[0].header
    assert (list(header.hidden_state_layers), header.max_sequence_length) == ([10, 20, 30], 512)


def test_full_size_embedding_fits_default_grpc_messages():
    replies = _replies(torch.zeros(1, 512, 15360, dtype=torch.bfloat16))
    assert replies[0].header.byte_length == 15_728_640
    chunks = [reply.chunk for reply in replies[1:]]
    assert len(chunks) == 4 and max(len(chunk) for chunk in chunks) <= MAX_CHUNK_BYTES < 4 * 1024 * 1024


def test_payload_is_little_endian_row_major():
    replies = _replies(torch.tensor([[1.0, 2.0]], dtype=torch.float32))
    assert b"".join(reply.chunk for reply in replies[1:]) == bytes.fromhex("0000803f00000040")
    assert (replies[0].header.dtype, list(replies[0].header.shape)) == ("float32", [1, 2])


def test_corrupted_byte_fails_the_checksum():
    tensor = torch.ones(4, 4)
    replies = _replies(tensor)
    damaged = bytearray(replies[1].chunk)
    damaged[3] ^= 0xFF
    replies[1].chunk = bytes(damaged)
    with pytest.raises(WireFormatError, match="checksum"):
        responses_to_tensor(replies, _spec(tensor))


def test_truncated_stream_is_reported():
    tensor = torch.ones(64, 64)
    with pytest.raises(WireFormatError, match="ended early"):
        responses_to_tensor(_replies(tensor, chunk_bytes=1024)[:-1], _spec(tensor))


def test_stream_without_header_is_refused():
    tensor = torch.ones(4, 4)
    with pytest.raises(WireFormatError, match="did not start with a tensor header"):
        responses_to_tensor(_replies(tensor)[1:], _spec(tensor))


def test_byte_count_disagreeing_with_shape_is_refused():
    tensor = torch.ones(4, 4)
    replies = _replies(tensor)
    replies[0].header.byte_length = 32
    with pytest.raises(WireFormatError, match="needs 64"):
        responses_to_tensor(replies, _spec(tensor))


@pytest.mark.parametrize(
    "shape,dtype",
    [((1, 512, 97), "float32"), ((1, 512, 96), "bfloat16"), ((2, 512, 96), "float32"), ((1, 77, 96), "float32")],
    ids=["wrong-width", "wrong-dtype", "wrong-batch", "wrong-length"],
)
def test_header_announcing_another_tensor_is_refused(shape, dtype):
    tensor = torch.zeros(shape, dtype=getattr(torch, dtype))
    with pytest.raises(WireFormatError, match="was asked for"):
        responses_to_tensor(_replies(tensor), TensorSpec("float32", (1, 512, 96)))


def test_header_announcing_8_gib_is_refused_without_allocating():
    header = encoder_pb2.TensorHeader(dtype="float32", shape=[1, 512, 4 * 1024 * 1024], byte_length=8 * 1024**3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WireFormatError, match="was asked for"):
        responses_to_tensor([encoder_pb2.EncodeResponse(header=header)], TensorSpec("float32", (1, 512, 96)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing near 8 GiB


def test_unknown_dtype_is_refused():
    with pytest.raises(WireFormatError, match="unknown dtype"):
        _ = TensorSpec("int7", (2,)).byte_length
