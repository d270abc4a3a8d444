"""int8 and nf4 encoders (bitsandbytes on the CPU), pre-quantised snapshots, the 30-layer default, bf16 on the CPU.

Quantised embeddings are close to bf16, not equal: the bounds below are measured on the tiny snapshot's random
weights (hidden size 64, one 4-bit block a row for most layers), where 4-bit drifts more than a trained 24B model.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from encoder_server.server import ready_line
from shared.protocol import encoder_pb2
from tests.support.helpers import RunningServer, start_server

PROMPTS = ["a red fox in fresh snow", "a lighthouse at dusk, oil painting", "雪の中の狐"]
LAYERS = (10, 20, 30)
# Per layer, over all tokens of all prompts: (lowest cosine similarity, highest relative error) allowed.
BOUNDS = {"int8": (0.998, 0.05), "nf4": (0.80, 0.55)}  # measured worst: int8 0.9985, 2.6 %; nf4 0.902, 41 %


@pytest.fixture(scope="module")
def bf16_server(tiny_snapshot: Path) -> Iterator[RunningServer]:
    with start_server(tiny_snapshot, dtype="bfloat16") as server:
        yield server


@pytest.fixture(scope="module", params=["int8", "nf4"])
def quantized_server(request: pytest.FixtureRequest, tiny_snapshot: Path) -> Iterator[RunningServer]:
    with start_server(tiny_snapshot, quantize=request.param) as server:
        yield server


def _info(server: RunningServer) -> encoder_pb2.GetInfoResponse:
    return server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10)


def _per_layer(embeds: torch.Tensor) -> list[torch.Tensor]:
    """`[B, L, 3 * H]` -> one `[B * L, H]` per stacked layer."""
    return [part.reshape(-1, part.shape[-1]).float() for part in embeds.chunk(len(LAYERS), dim=-1)]


def test_quantized_embeddings_stay_within_the_measured_bound_of_bf16(quantized_server, bf16_server):
    mode = _info(quantized_server).quantization
    lowest_cosine, highest_error = BOUNDS[mode]
    quantized, reference = quantized_server.encode(PROMPTS), bf16_server.encode(PROMPTS)
    assert quantized.dtype == reference.dtype == torch.bfloat16
    assert not torch.equal(quantized, reference)  # not bitwise: 8 and 4 bits lose information
    for layer, ours, theirs in zip(LAYERS, _per_layer(quantized), _per_layer(reference), strict=True):
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min().item()
        error = ((ours - theirs).norm() / theirs.norm()).item()
        assert cosine >= lowest_cosine and error <= highest_error, (mode, layer, cosine, error)


def test_get_info_and_ready_line_report_the_quantization(quantized_server, bf16_server):
    info, reference = _info(quantized_server), _info(bf16_server)
    assert info.quantization in ("int8", "nf4") and reference.quantization == "none"
    assert 0 < info.weight_bytes < reference.weight_bytes
    line = ready_line(quantized_server.handle, 1.0)
    assert f"{info.quantization} weights" in line and "GiB resident" in line


def test_fingerprints_differ_between_quantizations(tiny_snapshot, encoder_server):
    fingerprints = {_info(encoder_server).fingerprint}
    for mode in ("int8", "nf4"):
        with start_server(tiny_snapshot, quantize=mode) as server:
            fingerprints.add(_info(server).fingerprint)
    assert len(fingerprints) == 3


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_prequantized_snapshot_serves_what_quantizing_while_loading_serves(tiny_snapshot, tmp_path, mode):
    from transformers import BitsAndBytesConfig, Mistral3ForConditionalGeneration

    from encoder_server.model.quantization import bitsandbytes_config

    saved = tmp_path / f"tiny-{mode}"
    shutil.copytree(tiny_snapshot, saved, ignore=shutil.ignore_patterns("text_encoder"))
    config: BitsAndBytesConfig = bitsandbytes_config(mode, torch.bfloat16)
    model = Mistral3ForConditionalGeneration.from_pretrained(
        tiny_snapshot / "text_encoder", quantization_config=config, dtype=torch.bfloat16, device_map="cpu"
    )
    model.save_pretrained(saved / "text_encoder")
    with start_server(saved, dtype="bfloat16") as loaded, start_server(tiny_snapshot, quantize=mode) as quantized:
        assert _info(loaded).quantization == mode
        assert torch.equal(loaded.encode(PROMPTS), quantized.encode(PROMPTS))
    with pytest.raises(Exception, match=f"saved quantised as {mode}.*drop --quantize or pass --quantize {mode}"):
        with start_server(saved, quantize="none"):
            pass


def test_default_server_loads_30_layers_and_refuses_deeper_ones_with_the_hint(tiny_snapshot, encoder_server):
    with start_server(tiny_snapshot) as server:
        info = _info(server)
        assert (info.max_layer, info.num_layers) == (30, 34)
        assert torch.equal(server.encode(PROMPTS), encoder_server.encode(PROMPTS))
        with pytest.raises(grpc.RpcError) as refused:
            server.encode(["x"], hidden_state_layers=[31])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "loaded 30 of 34 layers; restart it with a larger --max-layer" in refused.value.details()


def test_bf16_on_the_cpu_is_bitwise_equal_to_diffusers_in_bf16(tiny_snapshot, bf16_server):
    from diffusers import Flux2Pipeline

    pipeline = Flux2Pipeline.from_pretrained(tiny_snapshot, dtype=torch.bfloat16, transformer=None, vae=None)
    with torch.no_grad():
        expected = Flux2Pipeline._get_mistral_3_small_prompt_embeds(
            pipeline.text_encoder, pipeline.tokenizer, PROMPTS, hidden_states_layers=LAYERS
        )
    served = bf16_server.encode(PROMPTS)
    assert served.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(served, expected)


def test_png_records_the_encoder_quantization(quantized_server, tiny_snapshot, tmp_path):
    from PIL import Image

    from diffusion_client.generation.cli import main as generate_main

    out = tmp_path / "quantized.png"
    size = ["--height", "64", "--width", "64", "--steps", "2", "--quiet"]
    assert (
        generate_main(
            ["a fox", "--encoder", quantized_server.target, "--model", str(tiny_snapshot), "--out", str(out), *size]
        )
        == 0
    )
    with Image.open(out) as image:
        assert image.text["encoder_quantization"] == _info(quantized_server).quantization
