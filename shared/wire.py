"""The tensor wire format: a header plus raw little-endian bytes in chunks, never pickle.

The `Encode` reply is one `header` message, then `chunk` messages, each under gRPC's default 4 MiB limit. The
sender builds them as serialized bytes: `encode_row` copies one prompt's `[L, D]` embedding once into ready frames
and checksums it (the header carries a CRC-32C per batch row), `reply_frames` puts a header in front without
copying; `tensor_to_frames` does both for a whole tensor. The receiver uses
`parse_frame` as the gRPC response deserializer (a chunk comes back as a zero-copy view) and `responses_to_tensor`
to check and rebuild the tensor, copying each byte once into an uninitialised tensor.

The receiver states what it asked for (`TensorSpec`): a header announcing another dtype, shape or number of row
checksums is refused before a byte is allocated, so a lying server cannot make a client allocate gigabytes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import google_crc32c
import numpy as np
import torch
from google.protobuf.message import DecodeError

from shared.defaults import SERVICE_NAME
from shared.protocol import encoder_pb2

# 4 MiB is gRPC's default receive limit for a whole message; leave room for the protobuf framing.
MAX_CHUNK_BYTES = 4 * 1024 * 1024 - 4096

# What clients pass to `channel.unary_stream` with `response_deserializer=parse_frame`.
WIRE_ENCODE_METHOD = f"/{SERVICE_NAME}/Encode"

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

_CHUNK_TAG = 0x12  # EncodeResponse field 2 (`chunk`), wire type 2 (length-delimited)


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


@dataclass(frozen=True)
class WireRow:
    """One prompt's embedding ready to send: serialized `chunk` messages and the CRC-32C of their payload."""

    frames: tuple[bytes, ...]
    crc32c: int
    payload_bytes: int

    @property
    def nbytes(self) -> int:
        """Bytes held, framing included (what a cache of rows counts)."""
        return sum(len(frame) for frame in self.frames)

    def payload(self) -> Iterator[memoryview]:
        """The data of each frame, without its framing, as zero-copy views."""
        for frame in self.frames:
            data = _chunk_data(frame)
            assert data is not None, "WireRow frames are chunk messages"
            yield data


def encode_row(row: torch.Tensor, chunk_bytes: int = MAX_CHUNK_BYTES) -> WireRow:
    """One batch row (`[L, D]`, any device) as `chunk` frames: its bytes copied once, checksummed as they lie."""
    _check_sendable(row.dtype)
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
    host = row.detach().to("cpu").contiguous()
    payload = _byte_array(host).data
    frames, crc = [], 0
    for start in range(0, payload.nbytes, chunk_bytes):
        data = payload[start : start + chunk_bytes]
        prefix = bytes((_CHUNK_TAG,)) + _varint(data.nbytes)
        frame = b"".join((prefix, data))  # the one copy
        crc = google_crc32c.extend(_rewind(crc, prefix), frame)  # = extend(crc, data), without slicing bytes
        frames.append(frame)
    return WireRow(tuple(frames), crc, payload.nbytes)


def header_frame(
    *,
    dtype: str,
    shape: Sequence[int],
    row_crc32c: Sequence[int],
    hidden_state_layers: Sequence[int],
    max_sequence_length: int,
) -> bytes:
    """The serialized header message; `byte_length` follows from `dtype` and `shape`."""
    header = encoder_pb2.TensorHeader(
        dtype=dtype,
        shape=list(shape),
        byte_length=TensorSpec(dtype, tuple(shape)).byte_length,
        row_crc32c=list(row_crc32c),
        hidden_state_layers=list(hidden_state_layers),
        max_sequence_length=max_sequence_length,
    )
    return encoder_pb2.EncodeResponse(header=header).SerializeToString()


def reply_frames(
    rows: Sequence[WireRow],
    *,
    dtype: str,
    shape: Sequence[int],
    hidden_state_layers: Sequence[int],
    max_sequence_length: int,
) -> list[bytes]:
    """The whole `Encode` reply as serialized messages: the header, then every row's frames. Copies nothing."""
    if len(shape) == 0 or shape[0] != len(rows):
        raise ValueError(f"{len(rows)} rows cannot make a tensor of shape {list(shape)}")
    _check_row_bytes(rows, TensorSpec(dtype, tuple(shape)).byte_length)
    header = header_frame(
        dtype=dtype,
        shape=shape,
        row_crc32c=[row.crc32c for row in rows],
        hidden_state_layers=hidden_state_layers,
        max_sequence_length=max_sequence_length,
    )
    return [header, *(frame for row in rows for frame in row.frames)]


def tensor_to_frames(
    tensor: torch.Tensor,
    *,
    hidden_state_layers: Sequence[int],
    max_sequence_length: int,
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> list[bytes]:
    """The whole `Encode` reply for `tensor` (`[B, L, D]`, any device) as serialized messages."""
    _check_sendable(tensor.dtype)
    if tensor.dim() == 0:
        raise WireFormatError("a 0-dimensional tensor has no batch rows to send")
    host = tensor.detach().to("cpu")  # one transfer for the whole batch
    rows = [encode_row(host[index], chunk_bytes) for index in range(host.shape[0])]
    return reply_frames(
        rows,
        dtype=DTYPE_NAMES[tensor.dtype],
        shape=tuple(tensor.shape),
        hidden_state_layers=hidden_state_layers,
        max_sequence_length=max_sequence_length,
    )


def tensor_to_responses(
    tensor: torch.Tensor,
    *,
    hidden_state_layers: Sequence[int],
    max_sequence_length: int,
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> list[encoder_pb2.EncodeResponse]:
    """`tensor_to_frames` as messages, for peers built on the generated stubs (test fakes)."""
    layers, length = hidden_state_layers, max_sequence_length
    frames = tensor_to_frames(tensor, hidden_state_layers=layers, max_sequence_length=length, chunk_bytes=chunk_bytes)
    return [encoder_pb2.EncodeResponse.FromString(frame) for frame in frames]


def rows_to_tensor(rows: Sequence[WireRow], dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """The tensor the rows hold, copied once (for replies that are not streamed frames)."""
    tensor = torch.empty(tuple(shape), dtype=DTYPES[dtype])
    target = _byte_array(tensor)
    _check_row_bytes(rows, target.nbytes)
    start = 0
    for row in rows:
        for data in row.payload():
            target[start : start + data.nbytes] = np.frombuffer(data, dtype=np.uint8)
            start += data.nbytes
    return tensor


def _check_row_bytes(rows: Sequence[WireRow], byte_length: int) -> None:
    held = sum(row.payload_bytes for row in rows)
    if held != byte_length:
        raise ValueError(f"the rows hold {held} bytes, not {byte_length}")


def parse_frame(data: bytes) -> encoder_pb2.EncodeResponse | memoryview:
    """gRPC response deserializer for `Encode`: a plain `chunk` message as a zero-copy view of its data, anything
    else as a parsed message. Never raises: undecodable bytes come back as an empty message, which
    `responses_to_tensor` reports."""
    chunk = _chunk_data(data)
    if chunk is not None:
        return chunk
    try:
        return encoder_pb2.EncodeResponse.FromString(data)
    except DecodeError:
        return encoder_pb2.EncodeResponse()  # neither header nor chunk: refused where the stream is read


Reply = encoder_pb2.EncodeResponse | memoryview | bytes


def responses_to_tensor(responses: Iterable[Reply], expected: TensorSpec) -> torch.Tensor:
    """Rebuild the tensor from an `Encode` reply stream, checking it is exactly `expected`.

    Takes parsed messages, `parse_frame` views or serialized messages. The header must announce `expected`'s
    dtype, shape, byte count and one checksum per row before anything is allocated; then the chunks must add up
    to that count, and each row must match its CRC-32C.
    """
    stream = map(_parsed, responses)
    first = next(stream, None)
    if not isinstance(first, encoder_pb2.EncodeResponse) or first.WhichOneof("part") != "header":
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
    rows = shape[0] if shape else 1
    if len(header.row_crc32c) != rows:
        raise WireFormatError(f"the header carries {len(header.row_crc32c)} row checksums for {rows} rows")
    tensor = torch.empty(shape, dtype=DTYPES[expected.dtype])  # not zero-filled: every byte is written below
    target = _byte_array(tensor)
    checker = _RowChecker(list(header.row_crc32c), expected_bytes // rows if rows else 0)
    received = 0
    for reply in stream:
        data = _chunk_of(reply)
        end = received + data.nbytes
        if end > expected_bytes:
            raise WireFormatError(f"received more than the {expected_bytes} bytes the header announced")
        target[received:end] = np.frombuffer(data, dtype=np.uint8)
        checker.update(data)
        received = end
    if received != expected_bytes:
        raise WireFormatError(f"received {received} of {expected_bytes} bytes; the stream ended early")
    checker.finish()
    return tensor


class _RowChecker:
    """CRC-32C of each row as chunks arrive, whatever their sizes; a mismatch names the row."""

    def __init__(self, row_crc32c: list[int], row_bytes: int) -> None:
        self.expected = row_crc32c
        self.row_bytes = row_bytes
        self.row = 0
        self.filled = 0  # bytes of the current row seen
        self.crc = 0

    def update(self, data: memoryview) -> None:
        start = 0
        while start < data.nbytes:
            take = min(self.row_bytes - self.filled, data.nbytes - start)
            self.crc = _extend(self.crc, data if take == data.nbytes else data[start : start + take])
            self.filled += take
            start += take
            if self.filled == self.row_bytes:
                self._close_row()

    def finish(self) -> None:
        """Check the rows no byte closed: rows of 0 bytes."""
        while self.row < len(self.expected):
            self._close_row()

    def _close_row(self) -> None:
        if self.crc != self.expected[self.row]:
            raise WireFormatError(
                f"checksum mismatch in row {self.row} (prompt {self.row}): crc32c {self.crc:#010x}, "
                f"header says {self.expected[self.row]:#010x}"
            )
        self.row, self.filled, self.crc = self.row + 1, 0, 0


def _parsed(reply: Reply) -> encoder_pb2.EncodeResponse | memoryview:
    if isinstance(reply, bytes):
        return parse_frame(reply)
    if isinstance(reply, encoder_pb2.EncodeResponse | memoryview):
        return reply
    raise WireFormatError(f"a reply must be an EncodeResponse, a parse_frame view or bytes, not {type(reply)}")


def _chunk_of(reply: encoder_pb2.EncodeResponse | memoryview) -> memoryview:
    """The payload bytes a reply after the header carries."""
    if isinstance(reply, memoryview):
        return reply if reply.format == "B" and reply.ndim == 1 else reply.cast("B")  # offsets count bytes
    part = reply.WhichOneof("part")
    if part == "header":
        raise WireFormatError("a second header arrived in the middle of the payload")
    if part != "chunk":
        raise WireFormatError("a reply message is neither a header nor a chunk (undecodable, or a newer protocol)")
    return memoryview(reply.chunk)


def _check_sendable(dtype: torch.dtype) -> None:
    if dtype not in DTYPE_NAMES:
        raise WireFormatError(f"dtype {dtype} is not sendable; use one of {sorted(DTYPES)}")
    if sys.byteorder != "little":
        raise WireFormatError("the wire format is little-endian; big-endian hosts are not supported")


def _chunk_data(frame: bytes) -> memoryview | None:
    """A zero-copy view of a frame's data if the frame is exactly one `chunk` field, else None."""
    if len(frame) < 2 or frame[0] != _CHUNK_TAG:
        return None
    length, shift, index = 0, 0, 1
    while index < len(frame) and index <= 10:
        byte = frame[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            return memoryview(frame)[index:] if index + length == len(frame) else None
        shift += 7
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _byte_array(tensor: torch.Tensor) -> np.ndarray:
    """A flat uint8 array over a contiguous tensor's storage (bfloat16 needs no numpy dtype this way)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


# google_crc32c reads only `bytes` objects. A view into the tail of one (a frame's data behind its framing) is
# checksummed over the whole object from a start value that the framing bytes turn into `crc`: CRC steps run
# backwards exactly, byte by byte. Views it cannot place that way are copied first (chunks that split rows).
_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_CRC32C_TABLE = [0] * 256
for _index in range(256):
    _value = _index
    for _ in range(8):
        _value = (_value >> 1) ^ _CRC32C_POLY if _value & 1 else _value >> 1
    _CRC32C_TABLE[_index] = _value
_BY_TOP_BYTE = {entry >> 24: index for index, entry in enumerate(_CRC32C_TABLE)}  # top bytes are all distinct
_MAX_REWIND = 16  # framing bytes; longer prefixes are copied instead


def _rewind(crc: int, prefix: bytes) -> int:
    """The start value from which `prefix` leaves CRC-32C `crc`: `extend(_rewind(crc, p), p) == crc`."""
    state = crc ^ 0xFFFFFFFF
    for byte in reversed(prefix):
        index = _BY_TOP_BYTE[state >> 24]
        state = (((state ^ _CRC32C_TABLE[index]) << 8) & 0xFFFFFFFF) | (index ^ byte)
    return state ^ 0xFFFFFFFF


def _extend(crc: int, data: memoryview) -> int:
    """`crc` extended over `data`, reading it in place when it is a `bytes` object or the tail of one."""
    base = data.obj
    if isinstance(base, bytes):
        offset = len(base) - data.nbytes
        if offset == 0 or (offset <= _MAX_REWIND and _address(data) == _address(memoryview(base)) + offset):
            return google_crc32c.extend(_rewind(crc, base[:offset]), base)
    return google_crc32c.extend(crc, data.tobytes())


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0])
