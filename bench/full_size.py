"""FLUX.2-dev-shaped components with random weights, built on the GPU with no download and nothing on disk.

The DiT is quantised to NF4 by diffusers' own bitsandbytes quantizer, step for step as
`Flux2Transformer2DModel.from_pretrained(..., quantization_config=...)` does it, except that each
weight comes from a random generator instead of a checkpoint. Weights are made and quantised one at
a time, so the bf16 model (64 GB) never exists: the peak is the NF4 model (about 17 GiB) plus one
bf16 tensor. NF4 kernels cost the same whatever the values, so timings and memory match the real model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

# black-forest-labs/FLUX.2-dev transformer/config.json (about 32.2B parameters, all but the norms in Linear layers).
FLUX2_DEV_TRANSFORMER_CONFIG: dict[str, Any] = {
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

RANDOM_TRANSFORMER_NAME = "random-flux2-dev-nf4"


def nf4_config(compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """The quantisation `diffusion_client.pipeline.load_transformer` asks for."""
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def random_tensor(
    name: str, shape: torch.Size, device: str | torch.device, dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """A plausible value for the state-dict entry `name`: N(0, 0.02) matrices, unit norm scales, zero biases."""
    if name.endswith("bias"):
        return torch.zeros(shape, device=device, dtype=dtype)
    if len(shape) >= 2:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(0.02)
    return torch.ones(shape, device=device, dtype=dtype)


def random_nf4_transformer(
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    config: Mapping[str, Any] = FLUX2_DEV_TRANSFORMER_CONFIG,
    seed: int = 0,
) -> Any:
    """`Flux2Transformer2DModel` in NF4 on `device`, quantised by diffusers as `from_pretrained` does, from random bf16.

    bitsandbytes needs a GPU: `validate_environment` raises `RuntimeError` without one.
    """
    from accelerate import dispatch_model, init_empty_weights
    from diffusers import Flux2Transformer2DModel
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.models.modeling_utils import no_init_weights
    from diffusers.quantizers import DiffusersAutoQuantizer

    cls = Flux2Transformer2DModel
    device_map = {"": torch.device(device)}  # what from_pretrained makes of device_map="cuda"
    quantization_config = nf4_config(dtype)
    # The order of ModelMixin.from_pretrained: quantizer, checks, skeleton on meta, Linear4bit swap, weights, hooks.
    quantizer = DiffusersAutoQuantizer.from_config(quantization_config, pre_quantized=False)
    quantizer.validate_environment(torch_dtype=dtype, device_map=device_map)
    dtype = quantizer.update_torch_dtype(dtype)
    keep_in_fp32_modules = list(cls._keep_in_fp32_modules or []) if quantizer.use_keep_in_fp32_modules else []

    # `quantization_config` in the config dict is how from_pretrained makes `model.config` record it.
    model_config = {**config, "quantization_config": quantization_config}
    previous_dtype = cls._set_default_torch_dtype(dtype)
    try:
        with no_init_weights(), init_empty_weights():
            model = cls.from_config(model_config)
    finally:
        torch.set_default_dtype(previous_dtype)

    quantizer.preprocess_model(model=model, device_map=device_map, keep_in_fp32_modules=keep_in_fp32_modules)
    quantizer.validate_environment(device_map=device_map)

    generator = torch.Generator(device).manual_seed(seed)
    entries = list(model.state_dict().items())  # meta tensors: names and shapes only
    for index, (name, meta) in enumerate(entries, start=1):
        value = random_tensor(name, meta.shape, device, dtype, generator)
        load_model_dict_into_meta(
            model,
            {name: value},
            dtype=dtype,
            model_name_or_path=RANDOM_TRANSFORMER_NAME,
            hf_quantizer=quantizer,
            keep_in_fp32_modules=keep_in_fp32_modules,
            device_map=device_map,
        )
        del value  # quantised copy kept; the bf16 one goes before the next is made
        if index % 50 == 0 or index == len(entries):
            log.info("random NF4 transformer: %d/%d tensors quantised", index, len(entries))

    dispatch_model(model, device_map=device_map)
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    model.register_to_config(_name_or_path=RANDOM_TRANSFORMER_NAME, _pre_quantization_dtype=dtype)
    return model.eval()


def random_vae(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    """`AutoencoderKLFlux2` with its default config (FLUX.2's VAE), randomly initialised on `device`."""
    from diffusers import AutoencoderKLFlux2

    previous_dtype = AutoencoderKLFlux2._set_default_torch_dtype(dtype)
    try:
        with torch.device(device):
            vae = AutoencoderKLFlux2()
    finally:
        torch.set_default_dtype(previous_dtype)
    return vae.eval()


def flux2_pipeline_without_text_encoder(transformer: Any, vae: Any) -> Any:
    """`Flux2Pipeline` with FLUX.2-dev's scheduler and no text encoder: prompts must come as `prompt_embeds`."""
    from diffusers import Flux2Pipeline

    from shared.tiny_snapshot import build_scheduler

    return Flux2Pipeline(
        scheduler=build_scheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )
