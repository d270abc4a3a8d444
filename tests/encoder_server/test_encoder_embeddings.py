"""Embeddings served over gRPC equal diffusers' `Flux2Pipeline._get_mistral_3_small_prompt_embeds`, bit for bit."""

from __future__ import annotations

import grpc
import pytest
import torch

from shared.protocol import encoder_pb2
from shared.wire import MAX_CHUNK_BYTES
from tests.support.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE, encode_via, start_server

LONG_PROMPT = "a lighthouse on a cliff at dusk, waves crashing below, " * 60  # well over 512 tokens


def test_single_prompt_matches_diffusers_bitwise(encoder_server, diffusers_embeds):
    embeds = encoder_server.encode(["a red fox jumping over a frozen river"])
    assert embeds.shape == (1, 512, TINY_EMBED_DIM)
    assert embeds.dtype == torch.float32
    assert torch.equal(embeds, diffusers_embeds(["a red fox jumping over a frozen river"]))


def test_several_prompts_match_diffusers_bitwise(encoder_server, diffusers_embeds):
    prompts = ["a cat", "two dogs playing chess in a park", "an astronaut riding a horse"]
    assert torch.equal(encoder_server.encode(prompts), diffusers_embeds(prompts))


def test_prompt_over_512_tokens_is_truncated_like_diffusers(encoder_server, diffusers_embeds, reference_pipeline):
    tokens = reference_pipeline.tokenizer.tokenizer(LONG_PROMPT, add_special_tokens=False)["input_ids"]
    assert len(tokens) > 512
    assert torch.equal(encoder_server.encode([LONG_PROMPT]), diffusers_embeds([LONG_PROMPT]))


def test_non_ascii_prompt_matches_diffusers_bitwise(encoder_server, diffusers_embeds):
    prompts = ["Ein Fuchs im Schnee, über dem Fluß", "雪の中の狐、夕暮れ 🦊", "ثعلب في الثلج"]
    assert torch.equal(encoder_server.encode(prompts), diffusers_embeds(prompts))


def test_empty_prompt_matches_diffusers_bitwise(encoder_server, diffusers_embeds):
    assert torch.equal(encoder_server.encode([""]), diffusers_embeds([""]))


@pytest.mark.parametrize(
    "layers",
    [(30, 20, 10), (1,), (5, 17), (34,), (10, 34, 34)],
    ids=["reversed-defaults", "first-layer", "two-layers", "last-layer-with-final-norm", "last-layer-twice"],
)
def test_custom_layers_match_diffusers_bitwise(encoder_server, diffusers_embeds, layers):
    prompts = ["a watercolor of a heron", "neon city at night"]
    embeds = encoder_server.encode(prompts, hidden_state_layers=list(layers))
    assert embeds.shape == (2, 512, len(layers) * TINY_HIDDEN_SIZE)
    assert torch.equal(embeds, diffusers_embeds(prompts, layers=layers))


def test_shorter_max_sequence_length_matches_diffusers_bitwise(encoder_server, diffusers_embeds):
    prompts = ["a bowl of ramen, steam rising", LONG_PROMPT]
    embeds = encoder_server.encode(prompts, max_sequence_length=77)
    assert embeds.shape == (2, 77, TINY_EMBED_DIM)
    assert torch.equal(embeds, diffusers_embeds(prompts, max_sequence_length=77))


def test_header_echoes_the_layers_and_length_used(encoder_server):
    replies = list(encoder_server.stub.Encode(encoder_pb2.EncodeRequest(prompts=["x"]), timeout=30))
    header = replies[0].header
    assert list(header.hidden_state_layers) == [10, 20, 30]
    assert header.max_sequence_length == 512
    assert list(header.shape) == [1, 512, TINY_EMBED_DIM]
    assert header.byte_length == sum(len(reply.chunk) for reply in replies[1:])


def test_large_reply_arrives_in_chunks_under_default_grpc_limit(tiny_snapshot):
    """16 prompts x all 34 layers is 35 MB: a client with default limits still receives it."""
    all_layers = list(range(1, 35))
    with (
        start_server(tiny_snapshot, max_layer=34, max_hidden_state_layers=34) as server,
        grpc.insecure_channel(server.target) as channel,  # default 4 MiB receive limit
    ):
        from shared.protocol import encoder_pb2_grpc

        stub = encoder_pb2_grpc.TextEncoderStub(channel)
        request = encoder_pb2.EncodeRequest(prompts=[f"prompt {i}" for i in range(16)], hidden_state_layers=all_layers)
        replies = list(stub.Encode(request, timeout=60))
        chunks = [reply.chunk for reply in replies[1:]]
        assert len(chunks) > 1
        assert all(len(chunk) <= MAX_CHUNK_BYTES for chunk in chunks)
        assert all(reply.ByteSize() < 4 * 1024 * 1024 for reply in replies)
        embeds = encode_via(stub, ["prompt 3"], hidden_state_layers=all_layers)
    assert replies[0].header.byte_length == 16 * 512 * 34 * TINY_HIDDEN_SIZE * 4
    assert embeds.shape == (1, 512, 34 * TINY_HIDDEN_SIZE)


def test_max_layer_server_matches_full_encoder_and_refuses_deeper_layers(tiny_snapshot, diffusers_embeds):
    with start_server(tiny_snapshot, max_layer=30) as server:
        encoder = server.wait_ready()
        assert len(encoder._model.layers) == 30
        info = server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10)
        assert (info.max_layer, info.num_layers) == (30, 34)
        assert torch.equal(server.encode(["a quiet harbor"]), diffusers_embeds(["a quiet harbor"]))
        with pytest.raises(grpc.RpcError) as refused:
            server.encode(["a quiet harbor"], hidden_state_layers=[31])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-layer" in refused.value.details()


def test_get_info_describes_the_loaded_model(encoder_server, tiny_snapshot):
    info = encoder_server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10)
    assert info.model_name == tiny_snapshot.name
    assert (info.hidden_size, info.num_layers, info.max_layer) == (TINY_HIDDEN_SIZE, 34, 34)
    assert list(info.default_hidden_state_layers) == [10, 20, 30]
    assert (info.default_max_sequence_length, info.max_sequence_length) == (512, 512)
    assert (info.dtype, info.device) == ("float32", "cpu")
    assert len(info.fingerprint) == 64
    assert info.server_version
    assert (info.max_prompts_per_request, info.max_prompt_chars) == (16, 20_000)
    assert (info.max_hidden_state_layers, info.max_reply_bytes) == (8, 256 * 1024 * 1024)
