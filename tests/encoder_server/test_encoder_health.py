"""Standard health checking and server reflection, as orchestrators and grpcurl use them."""

from __future__ import annotations

import threading

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from encoder_server.config import ModelConfig
from encoder_server.model.loaded_models import load_encoder
from encoder_server.model.prompt_encoder import PromptEncoder
from shared.defaults import SERVICE_NAME
from tests.support.helpers import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(server, service: str) -> int:  # type: ignore[no-untyped-def]
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_goes_from_not_serving_to_serving_when_the_model_loads(tiny_snapshot):
    release = threading.Event()

    def gated_loader() -> PromptEncoder:
        release.wait(60)
        return load_encoder(ModelConfig(model_path=tiny_snapshot, device="cpu"))

    with start_server(tiny_snapshot, load_encoder=gated_loader, wait=False) as server:
        assert _health(server, "") == NOT_SERVING
        assert _health(server, SERVICE_NAME) == NOT_SERVING
        release.set()
        server.wait_ready()
        assert _health(server, "") == SERVING
        assert _health(server, SERVICE_NAME) == SERVING


def test_reflection_lists_the_encoder_service(encoder_server):
    stub = reflection_pb2_grpc.ServerReflectionStub(encoder_server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {service.name for service in responses[0].list_services_response.service}
    assert SERVICE_NAME in names
    assert "grpc.health.v1.Health" in names


def test_reflection_serves_the_encoder_proto_for_clients_without_it(encoder_server):
    stub = reflection_pb2_grpc.ServerReflectionStub(encoder_server.channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    files = response.file_descriptor_response.file_descriptor_proto
    assert files and b"flux2/encoder/v1/encoder.proto" in files[0]
