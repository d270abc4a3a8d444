"""Bad input gets INVALID_ARGUMENT with a message naming the limit, and the server keeps serving."""

from __future__ import annotations

import threading

import grpc
import pytest

from encoder_server.model.loaded_models import load_encoder
from encoder_server.model.prompt_encoder import PromptEncoder
from shared.protocol import encoder_pb2
from tests.support.cli_runs import wait_until
from tests.support.helpers import TINY_EMBED_DIM, start_server

BAD_REQUESTS = {
    "no-prompts": (dict(prompts=[]), "send 1 to 16 prompts"),
    "too-many-prompts": (dict(prompts=["x"] * 17), "the limit is 16"),
    "prompt-over-char-limit": (dict(prompts=["ok", "y" * 20_001]), "prompt 1 has 20001 characters; the limit is 20000"),
    "layer-zero": (dict(prompts=["x"], hidden_state_layers=[0]), "use 1 to 34"),
    "layer-past-last": (dict(prompts=["x"], hidden_state_layers=[10, 35]), "layer 35 is out of range; use 1 to 34"),
    "length-zero": (dict(prompts=["x"], max_sequence_length=0), "use 1 to 512"),
    "length-over-limit": (dict(prompts=["x"], max_sequence_length=513), "max_sequence_length 513 is out of range"),
}


@pytest.mark.parametrize("fields,message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_returns_invalid_argument_and_server_keeps_serving(encoder_server, fields, message):
    with pytest.raises(grpc.RpcError) as error:
        list(encoder_server.stub.Encode(encoder_pb2.EncodeRequest(**fields), timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert encoder_server.encode(["still serving"]).shape == (1, 512, TINY_EMBED_DIM)


def test_encode_while_model_loads_returns_unavailable(tiny_snapshot):
    release = threading.Event()

    def slow_loader() -> PromptEncoder:
        release.wait(60)
        return load_encoder(_model_config(tiny_snapshot))

    with start_server(tiny_snapshot, load_encoder=slow_loader, wait=False) as server:
        with pytest.raises(grpc.RpcError) as error:
            server.encode(["too early"])
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in error.value.details()
        release.set()
        server.wait_ready()
        assert server.encode(["on time"]).shape == (1, 512, TINY_EMBED_DIM)


def test_full_queue_returns_resource_exhausted(tiny_snapshot):
    with start_server(tiny_snapshot, max_batch_size=2, max_queued_prompts=2, batch_wait_ms=3000) as server:
        waiting = server.stub.Encode(encoder_pb2.EncodeRequest(prompts=["a"]), timeout=30)
        wait_until(lambda: server.handle.engine.queued_prompts == 1, timeout_s=10)
        with pytest.raises(grpc.RpcError) as error:
            server.encode(["b", "c"])
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit 2" in error.value.details()
        assert len(list(waiting)) >= 2  # the queued request still completes


def _model_config(snapshot):  # type: ignore[no-untyped-def]
    from encoder_server.config import ModelConfig

    return ModelConfig(model_path=snapshot, device="cpu")
