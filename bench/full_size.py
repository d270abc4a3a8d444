"""FLUX.2-dev's components with random weights, built on the GPU with no download and nothing on disk.

The text encoder is Mistral Small 3.1 (24B) in bf16, made straight on the device in its real shapes: whole, as
diffusers' pipeline holds it, or only the language model's first `max_layer` layers, as the encoder server loads
it. The tokenizer is the real Tekken one.

The DiT is quantised to NF4 by diffusers' own bitsandbytes quantizer, step for step as
`Flux2Transformer2DModel.from_pretrained(..., quantization_config=...)` does it, except that each
weight comes from a random generator instead of a checkpoint. Weights are made and quantised one at
a time, so the bf16 model (64 GB) never exists: the peak is the NF4 model (about 17 GiB) plus one
bf16 tensor. NF4 kernels cost the same whatever the values, so timings and memory match the real model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS
from shared.wire import DTYPES

if TYPE_CHECKING:
    from encoder_server.prompt_encoder import PromptEncoder

log = logging.getLogger(__name__)


# --- the text encoder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TextShape:
    """The language model's sizes; everything else about the architecture is Mistral3's."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int = 131072
    rope_theta: float = 1e9
    rms_norm_eps: float = 1e-5

    def text_config(self, num_layers: int | None = None) -> Any:
        """`MistralConfig` for these sizes, with only the first `num_layers` decoder layers if given."""
        from transformers import MistralConfig

        return MistralConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers if num_layers is None else num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=131072,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            sliding_window=None,
            # Tekken's <s>, </s> and <pad>.
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=11,
            tie_word_embeddings=False,  # Mistral Small 3.1 has its own LM head
        )


# FLUX.2-dev's text encoder, Mistral-Small-3.1-24B (its text config; sliding_window is None).
MISTRAL_SMALL_3_1 = TextShape(
    hidden_size=5120, num_layers=40, num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=32768
)
RANDOM_ENCODER_NAME = "random-mistral-small-3.1"


def mistral3_config(shape: TextShape) -> Any:
    """Mistral3's config with `shape` for the language model and a tiny vision tower text prompts never use."""
    from transformers import Mistral3Config, PixtralVisionConfig

    vision_tower = PixtralVisionConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        head_dim=8,
        intermediate_size=32,
        image_size=56,
        patch_size=14,
        num_channels=3,
    )
    return Mistral3Config(
        text_config=shape.text_config(),
        vision_config=vision_tower,
        image_token_index=10,  # `[IMG]` in Tekken
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,  # transformers reads the flag from the top-level config
    )


def build_random(model_class: Any, config: Any, device: str, dtype: torch.dtype, seed: int) -> Any:
    """Instantiate straight on `device` in `dtype`: a 24B model never exists on the host or in float32.

    transformers' init draws every weight from normal(0, 0.02) in place, on the device.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def random_text_encoder(
    shape: TextShape = MISTRAL_SMALL_3_1, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Any:
    """The whole `Mistral3ForConditionalGeneration`, as diffusers' `Flux2Pipeline` holds its text encoder."""
    from transformers import Mistral3ForConditionalGeneration

    return build_random(Mistral3ForConditionalGeneration, mistral3_config(shape), device, dtype, seed)


def random_prompt_encoder(
    shape: TextShape = MISTRAL_SMALL_3_1,
    device: str = "cuda",
    dtype: str = "bfloat16",
    max_layer: int = max(DEFAULT_HIDDEN_STATE_LAYERS),
    seed: int = 0,
    tokenizer: Any = None,
) -> PromptEncoder:
    """A `PromptEncoder` over a random `MistralModel` with layers 1..`max_layer` only, as `--max-layer` loads it.

    `tokenizer` defaults to a fresh Tekken tokenizer; pass one to share it.
    """
    from transformers import MistralModel

    from encoder_server.config import RequestLimits
    from encoder_server.prompt_encoder import EncoderInfo, PromptEncoder
    from shared.tiny_snapshot import build_tokenizer

    model = build_random(MistralModel, shape.text_config(num_layers=max_layer), device, DTYPES[dtype], seed)
    info = EncoderInfo(
        model_name=RANDOM_ENCODER_NAME,
        model_path="(random weights, in memory)",
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        max_layer=max_layer,
        dtype=dtype,
        device=str(model.device),
        fingerprint=f"random-seed-{seed}",
    )
    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    return PromptEncoder(model, tokenizer, info, RequestLimits())


# --- the DiT and the VAE --------------------------------------------------------------------------

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
