"""The tensor wire format round-trips exactly and refuses replies that are not what was asked for."""

from __future__ import annotations

import resource

import google_crc32c
import pytest
import torch

from shared.protocol import encoder_pb2
from shared.wire import (
    MAX_CHUNK_BYTES,
    TensorSpec,
    WireFormatError,
    encode_row,
    header_frame,
    parse_frame,
    reply_frames,
    responses_to_tensor,
    rows_to_tensor,
    tensor_to_frames,
    tensor_to_responses,
)

LAYERS = (10, 20, 30)


def _frames(tensor: torch.Tensor, chunk_bytes: int = MAX_CHUNK_BYTES) -> list[bytes]:
    return tensor_to_frames(tensor, hidden_state_layers=LAYERS, max_sequence_length=512, chunk_bytes=chunk_bytes)


def _replies(tensor: torch.Tensor, chunk_bytes: int = MAX_CHUNK_BYTES) -> list[encoder_pb2.EncodeResponse]:
    return tensor_to_responses(tensor, hidden_state_layers=LAYERS, max_sequence_length=512, chunk_bytes=chunk_bytes)


def _spec(tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


def _header(frame: bytes) -> encoder_pb2.TensorHeader:
    message = parse_frame(frame)
    assert isinstance(message, encoder_pb2.EncodeResponse)
    return message.header


def _row_bytes(tensor: torch.Tensor, index: int) -> bytes:
    return tensor[index].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_through_parse_frame_is_bitwise_exact(dtype):
    tensor = torch.randn(2, 512, 96).to(dtype)
    frames = _frames(tensor, chunk_bytes=10_000)
    assert len(frames) > 2
    assert torch.equal(responses_to_tensor(map(parse_frame, frames), _spec(tensor)), tensor)


def test_round_trip_through_generated_messages_is_bitwise_exact():
    tensor = torch.randn(3, 512, 96)
    assert torch.equal(responses_to_tensor(_replies(tensor, chunk_bytes=10_000), _spec(tensor)), tensor)


def test_header_records_layers_length_and_one_crc32c_per_row():
    tensor = torch.randn(3, 4, 6)
    header = _replies(tensor)[0].header
    assert (list(header.hidden_state_layers), header.max_sequence_length) == ([10, 20, 30], 512)
    assert list(header.row_crc32c) == [google_crc32c.value(_row_bytes(tensor, index)) for index in range(3)]


def test_chunks_stay_under_the_limit_and_never_mix_rows():
    tensor = torch.randn(2, 512, 96)  # 196,608 bytes a row
    replies = _replies(tensor, chunk_bytes=50_000)
    sizes = [len(reply.chunk) for reply in replies[1:]]
    assert sizes == [50_000, 50_000, 50_000, 46_608] * 2


def test_full_size_embedding_fits_default_grpc_messages():
    frames = _frames(torch.zeros(1, 512, 15360, dtype=torch.bfloat16))
    assert _header(frames[0]).byte_length == 15_728_640
    assert len(frames) == 5 and max(len(frame) for frame in frames) < 4 * 1024 * 1024


def test_payload_is_little_endian_row_major():
    frames = _frames(torch.tensor([[1.0, 2.0]], dtype=torch.float32))
    assert frames[1:] == [b"\x12\x08" + bytes.fromhex("0000803f00000040")]
    header = _header(frames[0])
    assert (header.dtype, list(header.shape)) == ("float32", [1, 2])


@pytest.mark.parametrize("chunk_bytes", [1000, 196_608 + 5, 3 * 196_608], ids=["small", "off-by-5", "one-chunk"])
def test_chunks_crossing_row_boundaries_rebuild_and_check_each_row(chunk_bytes):
    tensor = torch.randn(3, 512, 96)
    header, *_ = _frames(tensor)
    payload = b"".join(_row_bytes(tensor, index) for index in range(3))
    chunks = [memoryview(payload)[start : start + chunk_bytes] for start in range(0, len(payload), chunk_bytes)]
    assert torch.equal(responses_to_tensor([parse_frame(header), *chunks], _spec(tensor)), tensor)


def test_damaged_byte_fails_the_checksum_of_its_row():
    tensor = torch.ones(3, 4, 4)
    replies = _replies(tensor, chunk_bytes=16)
    damaged = bytearray(replies[5].chunk)  # 64-byte rows in 16-byte chunks: replies 5 to 8 carry row 1
    damaged[3] ^= 0xFF
    replies[5].chunk = bytes(damaged)
    with pytest.raises(WireFormatError, match="checksum mismatch in row 1"):
        responses_to_tensor(replies, _spec(tensor))


def test_truncated_stream_is_reported():
    tensor = torch.ones(64, 64)
    with pytest.raises(WireFormatError, match="ended early"):
        responses_to_tensor(_frames(tensor, chunk_bytes=1024)[:-1], _spec(tensor))


def test_bytes_beyond_the_announced_length_are_refused():
    tensor = torch.ones(4, 4)
    frames = _frames(tensor)
    with pytest.raises(WireFormatError, match="more than the 64 bytes"):
        responses_to_tensor([*frames, frames[-1]], _spec(tensor))


def test_stream_without_header_is_refused():
    tensor = torch.ones(4, 4)
    with pytest.raises(WireFormatError, match="did not start with a tensor header"):
        responses_to_tensor(_frames(tensor)[1:], _spec(tensor))


def test_second_header_is_refused():
    tensor = torch.ones(4, 4)
    frames = _frames(tensor, chunk_bytes=16)
    with pytest.raises(WireFormatError, match="second header"):
        responses_to_tensor([frames[0], frames[1], frames[0]], _spec(tensor))


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
        responses_to_tensor(_frames(tensor), TensorSpec("float32", (1, 512, 96)))


def test_header_announcing_8_gib_is_refused_without_allocating():
    header = encoder_pb2.TensorHeader(dtype="float32", shape=[1, 512, 4 * 1024 * 1024], byte_length=8 * 1024**3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WireFormatError, match="was asked for"):
        responses_to_tensor([encoder_pb2.EncodeResponse(header=header)], TensorSpec("float32", (1, 512, 96)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing near 8 GiB


@pytest.mark.parametrize("checksums", [[], [0], [0, 0, 0]], ids=["none", "too-few", "too-many"])
def test_header_with_wrong_number_of_row_checksums_is_refused(checksums):
    header = header_frame(
        dtype="float32", shape=(2, 4, 4), row_crc32c=checksums, hidden_state_layers=LAYERS, max_sequence_length=4
    )
    with pytest.raises(WireFormatError, match=f"{len(checksums)} row checksums for 2 rows"):
        responses_to_tensor([header], TensorSpec("float32", (2, 4, 4)))


def test_parse_frame_views_chunk_data_in_place_and_parses_headers():
    header, chunk = _frames(torch.ones(1, 4))
    view = parse_frame(chunk)
    assert isinstance(view, memoryview) and view.obj is chunk and bytes(view) == bytes([0, 0, 0x80, 0x3F] * 4)
    assert isinstance(parse_frame(header), encoder_pb2.EncodeResponse)


def test_chunk_message_with_unusual_encoding_still_decodes():
    tensor = torch.ones(1, 4)
    header, chunk = _frames(tensor)
    unknown_field = bytes([0x18, 0x07])  # field 3, varint 7: a newer server's field, skipped by the parser
    parsed = parse_frame(unknown_field + chunk)
    assert isinstance(parsed, encoder_pb2.EncodeResponse)
    assert torch.equal(responses_to_tensor([header, parsed], _spec(tensor)), tensor)


def test_undecodable_reply_is_a_wire_format_error():
    tensor = torch.ones(1, 4)
    header, _ = _frames(tensor)
    with pytest.raises(WireFormatError, match="neither a header nor a chunk"):
        responses_to_tensor([parse_frame(header), parse_frame(b"\xff\xff\xff")], _spec(tensor))


def test_wire_row_holds_framed_payload_that_rows_to_tensor_rebuilds():
    tensor = torch.randn(2, 8, 6).to(torch.bfloat16)
    rows = [encode_row(tensor[index], chunk_bytes=40) for index in range(2)]
    assert b"".join(b"".join(row.payload()) for row in rows) == _row_bytes(tensor, 0) + _row_bytes(tensor, 1)
    assert rows[0].payload_bytes == 96 and rows[0].nbytes == 96 + 3 * 2  # three frames, 2 framing bytes each
    assert torch.equal(rows_to_tensor(rows, "bfloat16", (2, 8, 6)), tensor)
    frames = reply_frames(rows, dtype="bfloat16", shape=(2, 8, 6), hidden_state_layers=LAYERS, max_sequence_length=8)
    assert frames[1:] == [*rows[0].frames, *rows[1].frames]


def test_unknown_dtype_is_refused():
    with pytest.raises(WireFormatError, match="unknown dtype"):
        _ = TensorSpec("int7", (2,)).byte_length
