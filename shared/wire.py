"""The tensor wire format: a header plus raw little-endian bytes in chunks, never pickle.

`encode_tensor` turns a tensor into `(TensorMeta, chunks)`; `decode_tensor` checks and rebuilds it.
Chunks stay under gRPC's default 4 MiB message limit, so clients with default settings receive a
15.7 MB `[1, 512, 15360]` bfloat16 embedding.
"""

from __future__ import annotations

import math
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

# 4 MiB is gRPC's default receive limit for a whole message; leave room for the protobuf framing.
MAX_CHUNK_BYTES = 4 * 1024 * 1024 - 4096

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


class WireFormatError(ValueError):
    """The header and the bytes that followed it do not describe one valid tensor."""


@dataclass(frozen=True)
class TensorMeta:
    """What a receiver needs to rebuild and verify a tensor from its bytes."""

    dtype: str
    shape: tuple[int, ...]
    byte_length: int
    crc32: int


def encode_tensor(tensor: torch.Tensor, chunk_bytes: int = MAX_CHUNK_BYTES) -> tuple[TensorMeta, list[bytes]]:
    """Serialise `tensor` as row-major little-endian bytes split into chunks of at most `chunk_bytes`."""
    if tensor.dtype not in DTYPE_NAMES:
        raise WireFormatError(f"dtype {tensor.dtype} is not sendable; use one of {sorted(DTYPES)}")
    if sys.byteorder != "little":
        raise WireFormatError("the wire format is little-endian; big-endian hosts are not supported")
    host = tensor.detach().to("cpu").contiguous()
    # A byte view of the tensor's storage: no per-element conversion, and bfloat16 needs no numpy dtype.
    payload = memoryview(host.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    meta = TensorMeta(
        dtype=DTYPE_NAMES[tensor.dtype],
        shape=tuple(host.shape),
        byte_length=payload.nbytes,
        crc32=zlib.crc32(payload),
    )
    chunks = [bytes(payload[start : start + chunk_bytes]) for start in range(0, payload.nbytes, chunk_bytes)]
    return meta, chunks


def expected_byte_length(dtype: str, shape: tuple[int, ...]) -> int:
    if dtype not in DTYPES:
        raise WireFormatError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if any(dim < 0 for dim in shape):
        raise WireFormatError(f"negative dimension in shape {list(shape)}")
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return math.prod(shape) * itemsize


def decode_tensor(meta: TensorMeta, chunks: Iterable[bytes]) -> torch.Tensor:
    """Rebuild a tensor from its chunks, checking byte count, checksum, dtype and shape."""
    expected = expected_byte_length(meta.dtype, meta.shape)
    if meta.byte_length != expected:
        raise WireFormatError(
            f"header says {meta.byte_length} bytes but {meta.dtype}{list(meta.shape)} needs {expected}"
        )
    buffer = bytearray(expected)
    received = 0
    crc = 0
    for chunk in chunks:
        end = received + len(chunk)
        if end > expected:
            raise WireFormatError(f"received more than the {expected} bytes the header announced")
        buffer[received:end] = chunk
        crc = zlib.crc32(chunk, crc)
        received = end
    if received != expected:
        raise WireFormatError(f"received {received} of {expected} bytes; the stream ended early")
    if crc != meta.crc32:
        raise WireFormatError(f"checksum mismatch: crc32 {crc:#010x}, header says {meta.crc32:#010x}")
    if expected == 0:
        return torch.empty(meta.shape, dtype=DTYPES[meta.dtype])
    return torch.frombuffer(buffer, dtype=DTYPES[meta.dtype]).reshape(meta.shape)
