"""LoRA files for the tiny transformer, made the way diffusers' training scripts save them, and re-keyed into
kohya's and BFL/ai-toolkit's layouts (the inverse of diffusers' own converters) for interop tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def default_targets(transformer: Any) -> list[str]:
    """diffusers' training scripts' default: attention of the double blocks' image stream and of single blocks."""
    singles = [f"single_transformer_blocks.{i}.attn.to_out" for i in range(transformer.config.num_single_layers)]
    return ["to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj", *singles]


def load_tiny_transformer(snapshot: Path) -> Any:
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel.from_pretrained(snapshot / "transformer", dtype=torch.float32)


def random_lora(
    transformer: Any, out_dir: Path, rank: int = 4, alpha: float = 4.0, seed: int = 0, std: float = 0.2
) -> Path:
    """A LoRA with random A and B (B is zero when peft initialises it), saved as `Flux2Pipeline.save_lora_weights`
    saves a trained one; returns the file."""
    from diffusers import Flux2Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=default_targets(transformer)
    )
    transformer.add_adapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    layers = get_peft_model_state_dict(transformer)
    Flux2Pipeline.save_lora_weights(
        out_dir, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config.to_dict()
    )
    transformer.delete_adapters("default")
    return out_dir / "pytorch_lora_weights.safetensors"
