"""A FLUX.2 [klein] snapshot served over gRPC and HTTP: bitwise `Flux2KleinPipeline._get_qwen3_prompt_embeds`."""

from __future__ import annotations

import io

import grpc
import pytest
import requests
import torch

from shared.protocol import encoder_pb2
from shared.server_info import ServerInfo
from tests.support.helpers import RunningServer, start_server

EMPTY = ""
NON_ASCII = "ein Fuchs im Schnee — 雪の中の狐 🦊, naïve café"
LONG = "a red fox in fresh snow at golden hour, " * 40  # well over 512 tokens: truncated as diffusers does
KLEIN_WIDTH = 3 * 64  # three layers of the tiny Qwen3's hidden size


def info_of(server: RunningServer) -> ServerInfo:
    return ServerInfo.from_pb(server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=30))


@pytest.mark.parametrize(
    "prompts", [[EMPTY], [NON_ASCII], [LONG], [EMPTY, NON_ASCII, LONG]], ids=["empty", "non-ascii", "long", "batch"]
)
def test_klein_embeddings_match_diffusers_bitwise(klein_server, klein_diffusers_embeds, prompts):
    embeds = klein_server.encode(prompts)

    assert embeds.shape == (len(prompts), 512, KLEIN_WIDTH)
    assert torch.equal(embeds, klein_diffusers_embeds(prompts))


@pytest.mark.parametrize("layers", [(3, 27), (27, 9), (28,), (1, 1)], ids=str)
def test_klein_explicit_layers_match_diffusers_bitwise(klein_server, klein_diffusers_embeds, layers):
    prompts = ["a cat", NON_ASCII]
    embeds = klein_server.encode(prompts, hidden_state_layers=list(layers))

    assert torch.equal(embeds, klein_diffusers_embeds(prompts, layers=layers))


def test_klein_shorter_length_matches_diffusers_bitwise(klein_server, klein_diffusers_embeds):
    embeds = klein_server.encode([LONG], max_sequence_length=64)

    assert torch.equal(embeds, klein_diffusers_embeds([LONG], max_sequence_length=64))


@pytest.mark.parametrize("reply_format", ["torch", "safetensors"])
def test_klein_predict_over_http_matches_diffusers_bitwise(klein_server, klein_diffusers_embeds, reply_format):
    import safetensors.torch

    prompts = [NON_ASCII, EMPTY]
    response = requests.post(
        f"http://127.0.0.1:{klein_server.handle.http_port}/predict?format={reply_format}",
        json={"prompt": prompts, "hidden_state_layers": [3, 27]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    if reply_format == "torch":
        embeds = torch.load(io.BytesIO(response.content), weights_only=True)
    else:
        embeds = safetensors.torch.load(response.content)["prompt_embeds"]
    assert torch.equal(embeds, klein_diffusers_embeds(prompts, layers=(3, 27)))


def test_get_info_describes_a_klein_model(klein_server, tiny_klein_snapshot):
    info = info_of(klein_server)

    assert (info.family, info.pipeline) == ("qwen3", "Flux2KleinPipeline")
    assert info.default_hidden_state_layers == (9, 18, 27)
    assert (info.hidden_size, info.num_layers, info.max_layer) == (64, 28, 28)
    assert info.embedding_dim() == KLEIN_WIDTH
    assert info.upsampling_available is False
    [served] = info.models
    assert served == info.served()
    assert (served.name, served.family, served.pipeline) == (tiny_klein_snapshot.name, "qwen3", "Flux2KleinPipeline")
    assert served.default_hidden_state_layers == (9, 18, 27) and served.fingerprint == info.fingerprint


def test_klein_server_loads_27_layers_by_default(tiny_klein_snapshot):
    with start_server(tiny_klein_snapshot) as server:
        info = info_of(server)
        with pytest.raises(grpc.RpcError) as refused:
            server.encode(["a cat"], hidden_state_layers=[28])
    assert (info.max_layer, info.num_layers) == (27, 28)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-layer" in refused.value.details()


def test_upsample_on_a_klein_only_server_is_failed_precondition_naming_what_to_load(klein_server):
    request = encoder_pb2.UpsampleRequest(prompts=[encoder_pb2.UpsamplePrompt(prompt="a cat")])
    with pytest.raises(grpc.RpcError) as refused:
        klein_server.stub.Upsample(request, timeout=30)

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details()
    assert "does not upsample prompts" in details and "qwen3" in details
    assert "FLUX.2-dev snapshot with --enable-upsampling" in details


def test_klein_and_dev_fingerprints_differ_and_quantization_changes_the_klein_one(
    klein_server, encoder_server, tiny_klein_snapshot
):
    fp32 = info_of(klein_server)
    dev = info_of(encoder_server)
    with start_server(tiny_klein_snapshot, dtype="bfloat16") as bf16_server:
        bf16 = info_of(bf16_server)
    with start_server(tiny_klein_snapshot, quantize="int8") as int8_server:
        int8 = info_of(int8_server)
        int8_embeds = int8_server.encode(["a cat"])

    assert fp32.fingerprint != dev.fingerprint and dev.family == "mistral3"
    assert int8.quantization == "int8" and int8.dtype == "bfloat16"
    assert int8.fingerprint not in (fp32.fingerprint, bf16.fingerprint)
    assert int8.weight_bytes < bf16.weight_bytes < fp32.weight_bytes
    assert int8_embeds.shape == (1, 512, KLEIN_WIDTH) and bool(int8_embeds.float().isfinite().all())
