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


def _fused_qkv(layers: dict[str, torch.Tensor], block: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k and v's LoRAs as one: A stacked, B block-diagonal (exact: each output sees only its own rows)."""
    down = torch.cat([layers[f"{block}.attn.to_{x}.lora_A.weight"] for x in "qkv"])
    up = torch.block_diag(*[layers[f"{block}.attn.to_{x}.lora_B.weight"] for x in "qkv"]) * scale
    return down, up


def _bfl_pairs(lora: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, int]:
    """{BFL module name: (A, B)} for a diffusers-format LoRA of the default targets, its alpha and rank."""
    import json

    import safetensors
    import safetensors.torch

    tensors = safetensors.torch.load_file(lora)
    with safetensors.safe_open(lora, framework="pt") as handle:
        settings = json.loads((handle.metadata() or {})["lora_adapter_metadata"])
    rank, alpha = int(settings["transformer.r"]), float(settings["transformer.lora_alpha"])
    layers = {key.removeprefix("transformer."): value for key, value in tensors.items()}
    blocks = sorted({key.split(".attn.")[0] for key in layers if key.startswith("transformer_blocks.")})
    singles = sorted({key.split(".attn.")[0] for key in layers if key.startswith("single_transformer_blocks.")})
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"]

    for block in blocks:
        index = block.rsplit(".", 1)[1]
        pairs[f"double_blocks.{index}.img_attn.qkv"] = _fused_qkv(layers, block, 1.0)
        pairs[f"double_blocks.{index}.img_attn.proj"] = pair(f"{block}.attn.to_out.0")
    for block in singles:
        index = block.rsplit(".", 1)[1]
        pairs[f"single_blocks.{index}.linear1"] = pair(f"{block}.attn.to_qkv_mlp_proj")
        pairs[f"single_blocks.{index}.linear2"] = pair(f"{block}.attn.to_out")
    return pairs, alpha, rank


def to_bfl(lora: Path, out: Path) -> Path:
    """The LoRA in BFL/ai-toolkit's layout (`diffusion_model.double_blocks.N.img_attn.qkv.lora_A.weight`); alpha
    is baked into B, as that layout has no alpha."""
    import safetensors.torch

    pairs, alpha, rank = _bfl_pairs(lora)
    tensors = {}
    for name, (down, up) in pairs.items():
        tensors[f"diffusion_model.{name}.lora_A.weight"] = down.contiguous()
        tensors[f"diffusion_model.{name}.lora_B.weight"] = (up * (alpha / rank)).contiguous()
    safetensors.torch.save_file(tensors, out)
    return out


def to_kohya(lora: Path, out: Path) -> Path:
    """The LoRA in kohya's layout (`lora_unet_double_blocks_N_img_attn_qkv.lora_down.weight`, `.alpha`)."""
    import safetensors.torch

    pairs, alpha, rank = _bfl_pairs(lora)
    tensors = {}
    for name, (down, up) in pairs.items():
        prefix = "lora_unet_" + name.replace(".", "_")
        tensors[f"{prefix}.lora_down.weight"] = down.contiguous()
        tensors[f"{prefix}.lora_up.weight"] = up.contiguous()
        tensors[f"{prefix}.alpha"] = torch.tensor(alpha * down.shape[0] / rank)  # kohya scales by alpha / its rank
    safetensors.torch.save_file(tensors, out)
    return out


HEADER_LOOKALIKE_PADDING = 65 * 2**20  # past 64 MiB: "PK\x03\x04\0\0\0\0" read as a length (64.2 MiB) fits the file


def pickled_like_safetensors(tensors: dict[str, Any], out: Path) -> Path:
    """`tensors` as `torch.save` writes them, padded and patched so the first 8 bytes read as a safetensors header
    length that fits the file: a pickle a first-8-bytes check takes for safetensors, which torch.load still reads."""
    import zipfile

    torch.save(tensors, out)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        folder = archive.namelist()[0].split("/")[0]  # torch's records all sit in one folder
        archive.writestr(f"{folder}/padding", bytes(HEADER_LOOKALIKE_PADDING))  # a record torch.load never reads
    data = bytearray(out.read_bytes())
    data[4:8] = bytes(4)  # the zip's "version needed" and flags, which no zip reader needs: 0x04034b50 remains
    out.write_bytes(data)
    return out


class CreatesFileWhenUnpickled:
    """A pickle payload that creates `marker` when an unrestricted unpickler loads it (torch's restricted one
    refuses it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))
