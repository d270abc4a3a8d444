"""An unauthenticated caller is answered before its request is read, and each method's requests are held to that
method's size: with upsampling on, gRPC's receive limit (one number for every method) is Upsample's, 64 MiB."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shared.defaults import SERVICE_NAME
from shared.protocol import encoder_pb2
from tests.support.helpers import RunningServer, start_server

TOKEN = "alice-0123456789abcdef"


@pytest.fixture(scope="module")
def upsampling_server(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tokens = tmp_path_factory.mktemp("refusal") / "tokens"
    tokens.write_text(f"alice {TOKEN}\n")
    with start_server(tiny_snapshot, tokens_file=tokens, enable_upsampling=True, max_prompt_chars=1000) as server:
        yield server


def _never_sent(stop: threading.Event) -> Iterator[bytes]:
    """A request stream whose one message never comes (until the test ends)."""
    stop.wait(30)
    yield b""


@pytest.mark.parametrize("method", ["Encode", "Upsample", "GetInfo"])
def test_unauthenticated_call_is_refused_before_its_request_message_arrives(upsampling_server, method):
    stop = threading.Event()
    call = upsampling_server.channel.stream_stream(f"/{SERVICE_NAME}/{method}")  # the same bytes on the wire
    started = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as refused:
            list(call(_never_sent(stop), metadata=(("authorization", "Bearer wrong-0123456789abc"),), timeout=20))
    finally:
        stop.set()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # was DEADLINE_EXCEEDED after 20 s
    assert time.monotonic() - started < 10


def test_encode_request_over_encodes_own_size_is_refused_unparsed_though_upsample_may_be_larger(upsampling_server):
    request = encoder_pb2.EncodeRequest(prompts=["x" * 200_000])  # far over 16 prompts x 4 KB, far under 64 MiB
    with pytest.raises(grpc.RpcError) as refused:
        list(upsampling_server.stub.Encode(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Encode takes at most" in refused.value.details()


def test_get_info_request_padded_with_unknown_fields_is_refused(upsampling_server):
    padded = encoder_pb2.GetInfoRequest().SerializeToString() + b"\x9a\x3f" + b"\x80\x80\x04" + b"x" * 65536
    call = upsampling_server.channel.unary_unary(f"/{SERVICE_NAME}/GetInfo")
    with pytest.raises(grpc.RpcError) as refused:
        call(padded, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetInfo takes at most 1,024" in refused.value.details()


def test_authenticated_calls_still_work_after_refusals(upsampling_server):
    reply = upsampling_server.stub.GetInfo(
        encoder_pb2.GetInfoRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30
    )
    assert reply.upsampling_available
