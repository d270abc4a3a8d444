"""A hostile caller cannot make the server hold unbounded memory, flood its log or stop it serving."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc
import pytest

from shared.defaults import SERVICE_NAME
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from tests.support.cli_runs import wait_until
from tests.support.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE, start_server

ALL_LAYERS = list(range(1, 35))
BIG_REQUEST = encoder_pb2.EncodeRequest(prompts=[f"prompt {i}" for i in range(16)], hidden_state_layers=ALL_LAYERS)
BIG_REPLY_BYTES = 16 * 512 * 34 * TINY_HIDDEN_SIZE * 4  # 71 MB

# How much a client that stops reading still takes in is up to its HTTP/2 flow control, and gRPC grows a stream's
# window with the bandwidth-delay product it measures: on fast loopback, far enough to take in a whole 36 MB reply
# (so these tests passed or failed on timing). Stalled readers here read through a fixed 64 KiB window instead, so
# only the server's send timeout and reply budget decide what happens; the kernel's socket buffers add a few MB.
FIXED_SMALL_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 * 1024))


@contextlib.contextmanager
def small_window_stub(target: str) -> Iterator[encoder_pb2_grpc.TextEncoderStub]:
    with grpc.insecure_channel(target, options=FIXED_SMALL_WINDOW) as channel:
        yield encoder_pb2_grpc.TextEncoderStub(channel)


def test_duplicated_hidden_state_layers_past_the_limit_are_refused(encoder_server):
    """2,000 repeats of layer 1 in a 2 KB request once made a 2,000 MiB reply."""
    request = encoder_pb2.EncodeRequest(prompts=["x"] * 16, hidden_state_layers=[1] * 2000)
    with pytest.raises(grpc.RpcError) as error:
        list(encoder_server.stub.Encode(request, timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2000 hidden state layers asked for; the limit is 8" in error.value.details()
    assert encoder_server.encode(["still serving"], hidden_state_layers=[1] * 8).shape == (1, 512, 8 * TINY_HIDDEN_SIZE)


def test_reply_larger_than_the_stated_limit_is_refused(tiny_snapshot):
    with start_server(tiny_snapshot, max_reply_bytes=1024 * 1024) as server:
        info = server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as error:
            list(server.stub.Encode(encoder_pb2.EncodeRequest(prompts=["x"] * 3), timeout=30))
        assert info.max_reply_bytes == 1024 * 1024
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the reply would be 1.1 MiB; the limit is 1.0 MiB" in error.value.details()
        assert server.encode(["x"] * 2).shape == (2, 512, TINY_EMBED_DIM)  # 0.75 MiB fits


def test_reader_that_stops_reading_loses_its_reply_and_frees_the_memory(tiny_snapshot):
    overrides = dict(max_layer=34, max_hidden_state_layers=34, send_timeout_s=1.0)
    with start_server(tiny_snapshot, **overrides) as server, small_window_stub(server.target) as stub:
        engine = server.handle.engine
        stalled = stub.Encode(BIG_REQUEST, timeout=60)
        assert next(stalled).WhichOneof("part") == "header"  # then never read again
        wait_until(lambda: engine.budget.reserved_bytes == 0)
        with pytest.raises(grpc.RpcError) as error:
            list(stalled)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "the client stopped reading" in error.value.details()
        assert server.encode(["next caller"]).shape == (1, 512, TINY_EMBED_DIM)


def test_replies_held_for_slow_readers_are_bounded_in_bytes(tiny_snapshot):
    overrides = dict(
        max_layer=34,
        max_hidden_state_layers=34,
        send_timeout_s=30.0,
        max_reply_bytes=BIG_REPLY_BYTES,
        max_pending_reply_bytes=BIG_REPLY_BYTES,
    )
    with start_server(tiny_snapshot, **overrides) as server, small_window_stub(server.target) as stub:
        stalled = stub.Encode(BIG_REQUEST, timeout=60)
        next(stalled)
        with pytest.raises(grpc.RpcError) as error:
            server.encode(["one more"])
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MiB of replies" in error.value.details()
        assert sum(len(reply.chunk) for reply in stalled) == BIG_REPLY_BYTES  # the slow reader still gets it all
        assert server.encode(["one more"]).shape == (1, 512, TINY_EMBED_DIM)


def test_request_larger_than_the_limits_allow_is_refused_before_parsing(tiny_snapshot):
    """The receive limit follows the request limits (1.3 MB by default), not gRPC's 4 MiB or a fixed 64 MiB."""
    with start_server(tiny_snapshot, max_prompt_chars=1000, auth_token="secret") as server:
        metadata = (("authorization", "Bearer secret"),)  # without it the call is refused before anything is read
        oversized = encoder_pb2.EncodeRequest(prompts=["x" * 200_000])  # 200 KB, over 16 x 4 KB
        with pytest.raises(grpc.RpcError) as error:
            list(server.stub.Encode(oversized, timeout=30, metadata=metadata))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        largest_legal = encoder_pb2.EncodeRequest(prompts=["\U0001f98a" * 1000] * 16, hidden_state_layers=[1] * 8)
        assert len(list(server.stub.Encode(largest_legal, timeout=60, metadata=metadata))) > 1


def test_malformed_protobuf_gets_invalid_argument_and_one_log_line(encoder_server, caplog):
    raw = encoder_server.channel.unary_stream(f"/{SERVICE_NAME}/Encode")
    caplog.set_level(logging.INFO)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as error:
            list(raw(b"\xff\xff\xff\xff", timeout=10))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid EncodeRequest message" in error.value.details()
    records = [record for record in caplog.records if "EncodeRequest" in record.getMessage()]
    assert len(records) == 3
    assert all(record.exc_info is None and "\n" not in record.getMessage() for record in records)
    assert encoder_server.encode(["still serving"]).shape == (1, 512, TINY_EMBED_DIM)
