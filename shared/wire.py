"""The tensor wire format: a header plus raw little-endian bytes in chunks, never pickle.

Two functions, one per direction, used by the server, the client, the tests and the benchmarks:
`tensor_to_responses` turns a tensor into the `Encode` reply stream (one `header`, then `chunk`s), and
`responses_to_tensor` checks and rebuilds it. Chunks stay under gRPC's default 4 MiB message limit, so
clients with default settings receive a 15.7 MB `[1, 512, 15360]` bfloat16 embedding.

The receiver states what it asked for (`TensorSpec`): a header announcing another dtype or shape is
refused before a byte is allocated, so a lying server cannot make a client allocate gigabytes.
"""

from __future__ import annotations

import math
import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from shared.protocol import encoder_pb2

# 4 MiB is gRPC's default receive limit for a whole message; leave room for the protobuf framing.
MAX_CHUNK_BYTES = 4 * 1024 * 1024 - 4096

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


class WireFormatError(ValueError):
    """The reply stream does not describe the tensor that was asked for."""


def item_size(dtype: str) -> int:
    """Bytes per element of a wire dtype name."""
    if dtype not in DTYPES:
        raise WireFormatError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype].itemsize


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver expects: the dtype and the full shape it asked for."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def byte_length(self) -> int:
        return math.prod(self.shape) * item_size(self.dtype)


def tensor_to_responses(
    tensor: torch.Tensor,
    *,
    hidden_state_layers: Sequence[int],
    max_sequence_length: int,
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> list[encoder_pb2.EncodeResponse]:
    """The whole `Encode` reply for `tensor`: a header, then its row-major little-endian bytes in chunks."""
    if tensor.dtype not in DTYPE_NAMES:
        raise WireFormatError(f"dtype {tensor.dtype} is not sendable; use one of {sorted(DTYPES)}")
    if sys.byteorder != "little":
        raise WireFormatError("the wire format is little-endian; big-endian hosts are not supported")
    host = tensor.detach().to("cpu").contiguous()
    # A byte view of the tensor's storage: no per-element conversion, and bfloat16 needs no numpy dtype.
    payload = memoryview(host.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    header = encoder_pb2.TensorHeader(
        dtype=DTYPE_NAMES[tensor.dtype],
        shape=list(host.shape),
        byte_length=payload.nbytes,
        crc32=zlib.crc32(payload),
        hidden_state_layers=list(hidden_state_layers),
        max_sequence_length=max_sequence_length,
    )
    replies = [encoder_pb2.EncodeResponse(header=header)]
    for start in range(0, payload.nbytes, chunk_bytes):
        replies.append(encoder_pb2.EncodeResponse(chunk=bytes(payload[start : start + chunk_bytes])))
    return replies


def responses_to_tensor(responses: Iterable[encoder_pb2.EncodeResponse], expected: TensorSpec) -> torch.Tensor:
    """Rebuild the tensor from an `Encode` reply stream, checking it is exactly `expected`.

    The header must announce `expected`'s dtype and shape and the matching byte count before anything is
    allocated; then the chunks must add up to that count and match the CRC-32.
    """
    stream = iter(responses)
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "header":
        raise WireFormatError("the reply did not start with a tensor header")
    header = first.header
    shape = tuple(int(dim) for dim in header.shape)
    if header.dtype != expected.dtype or shape != expected.shape:
        raise WireFormatError(
            f"the header announces {header.dtype}{list(shape)} but {expected.dtype}{list(expected.shape)} was asked for"
        )
    expected_bytes = expected.byte_length
    if header.byte_length != expected_bytes:
        raise WireFormatError(
            f"header says {header.byte_length} bytes but {expected.dtype}{list(shape)} needs {expected_bytes}"
        )
    buffer = bytearray(expected_bytes)
    received = 0
    crc = 0
    for reply in stream:
        if reply.WhichOneof("part") != "chunk":
            raise WireFormatError("a second header arrived in the middle of the payload")
        chunk = reply.chunk
        end = received + len(chunk)
        if end > expected_bytes:
            raise WireFormatError(f"received more than the {expected_bytes} bytes the header announced")
        buffer[received:end] = chunk
        crc = zlib.crc32(chunk, crc)
        received = end
    if received != expected_bytes:
        raise WireFormatError(f"received {received} of {expected_bytes} bytes; the stream ended early")
    if crc != header.crc32:
        raise WireFormatError(f"checksum mismatch: crc32 {crc:#010x}, header says {header.crc32:#010x}")
    if expected_bytes == 0:
        return torch.empty(shape, dtype=DTYPES[expected.dtype])
    return torch.frombuffer(buffer, dtype=DTYPES[expected.dtype]).reshape(shape)
