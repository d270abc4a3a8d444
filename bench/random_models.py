"""FLUX.2-dev's components with random weights, made on the device by diffusers' and transformers' constructors.

Nothing is downloaded or written, and kernels cost the same whatever the weights hold, so timings and memory match
the real models'. The text encoder is Mistral Small 3.1 (`Mistral3Config()`'s defaults) with the real Tekken
tokenizer; the DiT is built in bf16 and then quantised to NF4 by bitsandbytes' own `Linear4bit`, so full size
needs an 80 GB GPU (64 GB of bf16 DiT exists until it is quantised); the VAE is `AutoencoderKLFlux2()`, FLUX.2's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from encoder_server.prompt_encoder import PromptEncoder

RANDOM_ENCODER_NAME = "random-mistral-small-3.1"

# black-forest-labs/FLUX.2-dev transformer/config.json: 32.2B parameters, nearly all in Linear layers.
FLUX2_DEV_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "out_channels": None,
    "num_layers": 8,
    "num_single_layers": 48,
    "attention_head_dim": 128,
    "num_attention_heads": 48,
    "joint_attention_dim": 15360,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": True,
}


@contextlib.contextmanager
def built_on(device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """Modules constructed inside are made on `device` in `dtype`: never on the host, never in float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def mistral_small_3_1_config() -> Any:
    """Mistral Small 3.1 24B: `Mistral3Config`'s defaults, with its own LM head as the checkpoint has."""
    from transformers import Mistral3Config

    return Mistral3Config(tie_word_embeddings=False)


def random_text_encoder(device: str) -> Any:
    """The whole `Mistral3ForConditionalGeneration` (48 GB in bf16), as diffusers' `Flux2Pipeline` holds it."""
    from transformers import Mistral3ForConditionalGeneration

    torch.manual_seed(0)
    with built_on(device):
        model = Mistral3ForConditionalGeneration(mistral_small_3_1_config())
    return model.eval().requires_grad_(False)


def random_prompt_encoder(device: str, max_layer: int, tokenizer: Any = None) -> PromptEncoder:
    """The server's `PromptEncoder` over a random `MistralModel` with layers 1..`max_layer`, as `--max-layer` loads."""
    from transformers import MistralModel

    from encoder_server.config import RequestLimits
    from encoder_server.prompt_encoder import ModelInfo, PromptEncoder
    from shared.tiny_snapshot import build_tokenizer

    text_config = mistral_small_3_1_config().text_config
    num_layers = int(text_config.num_hidden_layers)
    if not 1 <= max_layer <= num_layers:
        raise ValueError(f"max_layer must be between 1 and {num_layers}, not {max_layer}")
    text_config.num_hidden_layers = max_layer
    torch.manual_seed(0)
    with built_on(device):
        model = MistralModel(text_config).eval().requires_grad_(False)
    info = ModelInfo(
        model_name=RANDOM_ENCODER_NAME,
        model_path="(random weights, in memory)",
        hidden_size=int(text_config.hidden_size),
        num_layers=num_layers,
        max_layer=max_layer,
        dtype="bfloat16",
        device=str(model.device),
        fingerprint="random-seed-0",
        weight_bytes=int(model.get_memory_footprint()),
    )
    return PromptEncoder(model, tokenizer or build_tokenizer(), info, RequestLimits())


def quantize_linears_nf4(model: torch.nn.Module, device: str | torch.device) -> None:
    """Swap every `nn.Linear` for a bitsandbytes NF4 `Linear4bit`, as diffusers' quantizer does for the client.

    bf16 compute and no double quantisation, as `diffusion_client.pipeline`'s `BitsAndBytesConfig` asks.
    `Params4bit.to(device)` quantises (data already there included); each bf16 weight is freed as its layer is
    replaced, since only layer names are held across the loop.
    """
    import bitsandbytes as bnb

    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child_name)
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=torch.bfloat16,
            compress_statistics=False,
            quant_type="nf4",
            device="meta",  # the real weight comes next; nothing is allocated for this placeholder
        )
        weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, compress_statistics=False, quant_type="nf4", module=quantized
        )
        quantized.weight = weight.to(device)  # type: ignore[misc]  # bnb types `to` for Modules
        quantized.bias = linear.bias
        setattr(parent, child_name, quantized)


def random_nf4_transformer(device: str, config: Mapping[str, Any] = FLUX2_DEV_CONFIG) -> Any:
    """`Flux2Transformer2DModel` with random weights in NF4 on `device` (about 17 GiB at full size).

    Built in bf16 first (64 GB at full size: it fits an 80 GB H100, not a 24 GB card), then quantised.
    """
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    with built_on(device):
        transformer = Flux2Transformer2DModel.from_config(dict(config))
    quantize_linears_nf4(transformer, device)
    return transformer.eval().requires_grad_(False)


def random_pipeline(device: str) -> Any:
    """`Flux2Pipeline` with the random NF4 DiT, FLUX.2's VAE (random, bf16) and no text encoder."""
    from diffusers import AutoencoderKLFlux2, Flux2Pipeline

    from shared.tiny_snapshot import build_scheduler

    transformer = random_nf4_transformer(device)
    with built_on(device):
        vae = AutoencoderKLFlux2().eval().requires_grad_(False)
    return Flux2Pipeline(
        scheduler=build_scheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )
