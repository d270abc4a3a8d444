"""The tensor wire format round-trips exactly and rejects damaged payloads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shared.wire import MAX_CHUNK_BYTES, WireFormatError, decode_tensor, encode_tensor


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_is_bitwise_exact(dtype):
    tensor = torch.randn(2, 512, 96).to(dtype)
    meta, chunks = encode_tensor(tensor, chunk_bytes=10_000)
    assert len(chunks) > 1 and all(len(chunk) <= 10_000 for chunk in chunks)
    assert torch.equal(decode_tensor(meta, chunks), tensor)


def test_full_size_embedding_fits_default_grpc_messages():
    meta, chunks = encode_tensor(torch.zeros(1, 512, 15360, dtype=torch.bfloat16))
    assert meta.byte_length == 15_728_640
    assert len(chunks) == 4 and max(len(chunk) for chunk in chunks) <= MAX_CHUNK_BYTES < 4 * 1024 * 1024


def test_payload_is_little_endian_row_major():
    meta, chunks = encode_tensor(torch.tensor([[1.0, 2.0]], dtype=torch.float32))
    assert b"".join(chunks) == bytes.fromhex("0000803f00000040")
    assert (meta.dtype, meta.shape) == ("float32", (1, 2))


def test_corrupted_byte_fails_the_checksum():
    meta, chunks = encode_tensor(torch.ones(4, 4))
    damaged = bytearray(chunks[0])
    damaged[3] ^= 0xFF
    with pytest.raises(WireFormatError, match="checksum"):
        decode_tensor(meta, [bytes(damaged)])


def test_truncated_stream_is_reported():
    meta, chunks = encode_tensor(torch.ones(64, 64), chunk_bytes=1024)
    with pytest.raises(WireFormatError, match="ended early"):
        decode_tensor(meta, chunks[:-1])


def test_header_disagreeing_with_shape_is_rejected():
    meta, chunks = encode_tensor(torch.ones(4, 4))
    with pytest.raises(WireFormatError, match="needs 64"):
        decode_tensor(dataclasses.replace(meta, byte_length=32), chunks)


def test_unknown_dtype_is_rejected():
    meta, chunks = encode_tensor(torch.ones(2))
    with pytest.raises(WireFormatError, match="unknown dtype"):
        decode_tensor(dataclasses.replace(meta, dtype="int7"), chunks)
