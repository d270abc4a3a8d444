"""With a shared token, encoder calls need it; health stays open for load balancers."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from diffusion_client import RemoteTextEncoder
from diffusion_client.errors import EncoderRejectedError
from shared.protocol import encoder_pb2
from tests.support.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE, start_server

TOKEN = "team-secret-42"


@pytest.fixture(scope="module")
def guarded_server(tiny_snapshot):  # type: ignore[no-untyped-def]
    with start_server(tiny_snapshot, auth_token=TOKEN) as server:
        yield server


def test_call_without_token_is_unauthenticated(guarded_server):
    with pytest.raises(grpc.RpcError) as error:
        list(guarded_server.stub.Encode(encoder_pb2.EncodeRequest(prompts=["x"]), timeout=10))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info_error:
        guarded_server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10)
    assert info_error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_wrong_token_is_refused_with_a_hint(guarded_server):
    with (
        RemoteTextEncoder(guarded_server.target, token="guess") as encoder,
        pytest.raises(EncoderRejectedError) as error,
    ):
        encoder.encode("x")
    assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "--token" in str(error.value)


def test_right_token_gets_embeddings(guarded_server):
    with RemoteTextEncoder(guarded_server.target, token=TOKEN) as encoder:
        assert encoder.encode("x").shape == (1, 512, TINY_EMBED_DIM)
        assert encoder.info().hidden_size == TINY_HIDDEN_SIZE


def test_health_needs_no_token(guarded_server):
    stub = health_pb2_grpc.HealthStub(guarded_server.channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_bearer_scheme_is_case_insensitive(guarded_server, scheme):
    metadata = (("authorization", f"{scheme} {TOKEN}"),)
    info = guarded_server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10, metadata=metadata)
    assert info.hidden_size == TINY_HIDDEN_SIZE


def test_token_without_the_bearer_scheme_is_refused(guarded_server):
    with pytest.raises(grpc.RpcError) as error:
        guarded_server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10, metadata=(("authorization", TOKEN),))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
