"""NF4 on the CPU takes one of two bitsandbytes paths; the tiny snapshot must run on both, whatever this CPU has.

bitsandbytes 0.50 asks `has_avx512bf16()`. Where it answers yes, each `Linear4bit` repacks its weight on its first
forward pass (`_convert_weight_packed_for_cpu`: output rows in tiles of 32, inputs in whole 64-weight blocks) for a
fused bf16 kernel; elsewhere it dequantises and multiplies. The tests make that answer yes or no (the name
`Linear4bit.__init__` reads), so the packing is checked on every machine; the fused kernel itself is registered
only on CPUs that have the instruction, so its forward pass runs only there.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from encoder_server.model.loading import load_language_model
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS
from shared.tiny_snapshot import TinySnapshotShape, build_text_encoder

LOWEST_COSINE = (
    0.80  # per token at FLUX.2's layers against bf16, as tests/encoder_server/test_encoder_quantization.py bounds nf4
)


def cpu_has_avx512_bf16() -> bool:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "avx512_bf16" in line.split() for line in cpuinfo.splitlines())


@pytest.fixture
def avx512_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Make bitsandbytes' own check answer `request.param` for the layers built in the test."""
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: request.param)
    yield request.param


def load(text_encoder_dir: Path, quantize: str = "nf4", whole: bool = False) -> Any:
    """The model our server loads: the language model, or with `whole` all of Mistral3 as upsampling needs it."""
    model, *_ = load_language_model(
        text_encoder_dir, max_layer=None, device="cpu", dtype=torch.bfloat16, quantize=quantize, whole=whole
    )
    return model


def linear4bit_layers(model: Any) -> dict[str, Any]:
    import bitsandbytes as bnb

    layers = {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    assert layers, "nothing was quantised to 4 bits"
    return layers


def unpackable(layers: dict[str, Any]) -> list[str]:
    """The layers whose weights bitsandbytes' AVX512-BF16 path cannot pack (tried on copies; pure torch)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    failed = []
    for name, layer in layers.items():
        state = copy.deepcopy(layer.weight.quant_state)
        out_features, in_features = state.shape
        try:
            packed, packed_state = _convert_weight_packed_for_cpu(layer.weight.data.clone(), state)
        except (RuntimeError, AssertionError):
            failed.append(name)
            continue
        if packed.shape != (out_features, in_features // 2) or packed_state.absmax.shape != (
            in_features // state.blocksize,
            out_features,
        ):
            failed.append(name)
    return failed


def flux_layers(model: Any) -> torch.Tensor:
    """The hidden states FLUX.2 stacks, `[layers, B, L, H]`, for fixed token ids."""
    input_ids = torch.randint(0, TinySnapshotShape().vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        hidden_states = model(input_ids=input_ids, output_hidden_states=True).hidden_states
    return torch.stack([hidden_states[layer] for layer in DEFAULT_HIDDEN_STATE_LAYERS])


def lowest_cosine(ours: torch.Tensor, reference: torch.Tensor) -> float:
    flat = [tensor.reshape(-1, tensor.shape[-1]).float() for tensor in (ours, reference)]
    return torch.nn.functional.cosine_similarity(*flat, dim=-1).min().item()


@pytest.fixture(scope="module")
def bf16_layers(tiny_snapshot: Path) -> torch.Tensor:
    return flux_layers(load(tiny_snapshot / "text_encoder", quantize="none"))


@pytest.mark.parametrize("avx512_bf16", [True], indirect=True)
@pytest.mark.parametrize("whole", [False, True], ids=["encoder", "whole-model-for-upsampling"])
def test_every_nf4_layer_of_the_tiny_snapshot_packs_for_the_avx512_bf16_path(tiny_snapshot, avx512_bf16, whole):
    layers = linear4bit_layers(load(tiny_snapshot / "text_encoder", whole=whole))
    assert all(layer.support_avx512bf16_for_cpu for layer in layers.values())  # they would pack on first use
    assert unpackable(layers) == []


@pytest.mark.parametrize("avx512_bf16", [True], indirect=True)
def test_a_32_wide_encoder_fails_the_packing_check(tmp_path, avx512_bf16):
    """The old tiny snapshot's width, which broke every NF4 test on AVX512-BF16 CPUs: the check must catch it."""
    narrow = TinySnapshotShape(text_hidden_size=32, text_num_layers=2)
    build_text_encoder(narrow).save_pretrained(tmp_path / "text_encoder")
    failed = unpackable(linear4bit_layers(load(tmp_path / "text_encoder")))
    assert "layers.0.self_attn.q_proj" in failed and "layers.0.mlp.down_proj" not in failed  # 32 in, 128 in


@pytest.mark.skipif(not cpu_has_avx512_bf16(), reason="bitsandbytes' fused kernel needs a CPU with AVX512-BF16")
@pytest.mark.parametrize("avx512_bf16", [True], indirect=True)
def test_nf4_on_the_avx512_bf16_path_encodes_close_to_bf16(tiny_snapshot, bf16_layers, avx512_bf16):
    model = load(tiny_snapshot / "text_encoder")
    assert lowest_cosine(flux_layers(model), bf16_layers) >= LOWEST_COSINE
    assert all(layer.weight.quant_state.packing_format_for_cpu for layer in linear4bit_layers(model).values())


@pytest.mark.parametrize("avx512_bf16", [False], indirect=True)
def test_nf4_on_the_plain_cpu_path_encodes_close_to_bf16(tiny_snapshot, bf16_layers, avx512_bf16):
    model = load(tiny_snapshot / "text_encoder")
    assert lowest_cosine(flux_layers(model), bf16_layers) >= LOWEST_COSINE
    layers = linear4bit_layers(model).values()
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers)


def test_every_matrix_in_the_tiny_snapshot_is_a_multiple_of_64_wide_both_ways(tiny_snapshot):
    """As in the real models, so bitsandbytes' packing (and any kernel tiling by 32 or 64) sees real-shaped layers."""
    from safetensors import safe_open

    shapes = {}
    for weights in sorted(tiny_snapshot.glob("*/*.safetensors")):
        with safe_open(weights, "pt") as tensors:
            for name in tensors.keys():
                shapes[f"{weights.parent.name}/{name}"] = tensors.get_slice(name).get_shape()
    matrices = {name: shape for name, shape in shapes.items() if len(shape) == 2}
    assert {name.split("/")[0] for name in matrices} == {"text_encoder", "transformer", "vae"}
    assert {name: shape for name, shape in matrices.items() if shape[0] % 64 or shape[1] % 64} == {}


@pytest.mark.parametrize("avx512_bf16", [True], indirect=True)
def test_every_nf4_layer_of_the_tiny_klein_encoder_packs_for_the_avx512_bf16_path(tiny_klein_snapshot, avx512_bf16):
    from encoder_server.model.families import QWEN3

    model, *_ = load_language_model(
        tiny_klein_snapshot / "text_encoder",
        family=QWEN3,
        max_layer=None,
        device="cpu",
        dtype=torch.bfloat16,
        quantize="nf4",
    )
    layers = linear4bit_layers(model)
    assert all(layer.support_avx512bf16_for_cpu for layer in layers.values())
    assert unpackable(layers) == []
