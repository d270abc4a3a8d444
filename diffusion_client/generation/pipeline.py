"""Load `Flux2Pipeline` (FLUX.2-dev) or `Flux2KleinPipeline` (FLUX.2 [klein]) without its text encoder: the DiT
(NF4 on CUDA) and the VAE only.

Which pipeline a snapshot holds is read from its `model_index.json`, as diffusers' `DiffusionPipeline` would.
NF4 quantisation goes through diffusers' bitsandbytes integration, either while loading a bf16 snapshot or by
loading a snapshot saved pre-quantised. The VAE stays in bf16 (float32 on CPU).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from diffusion_client.errors import InputError

Quantize = Literal["nf4", "none"]
PIPELINES = ("Flux2Pipeline", "Flux2KleinPipeline")


@dataclass(frozen=True)
class ModelKind:
    """Which FLUX.2 pipeline a snapshot is, and the settings its makers recommend."""

    pipeline: str  # "Flux2Pipeline" or "Flux2KleinPipeline"
    distilled: bool  # klein's distilled variants run without classifier-free guidance
    steps: int
    guidance: float


def model_kind(model_path: Path) -> ModelKind:
    """Read `model_index.json`: FLUX.2-dev (28 steps, guidance 4), klein distilled (4, 1.0) or klein base (50, 4.0)."""
    _check_snapshot(model_path)
    path = model_path / "model_index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        pipeline = index["_class_name"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"cannot read the pipeline class from {path}: {error}") from error
    if pipeline not in PIPELINES:
        raise InputError(f"{model_path} holds a {pipeline}; flux2-generate runs {' and '.join(PIPELINES)} snapshots")
    if pipeline == "Flux2Pipeline":
        return ModelKind(pipeline, distilled=True, steps=28, guidance=4.0)
    distilled = bool(index.get("is_distilled", False))
    return ModelKind(pipeline, distilled, steps=4 if distilled else 50, guidance=1.0 if distilled else 4.0)


def resolve_quantize(flag: str, device: str) -> Quantize:
    """`--quantize`: nf4 or none as given; auto is nf4 on CUDA (bitsandbytes' NF4 path) and none elsewhere."""
    if flag == "auto":
        return "nf4" if device.startswith("cuda") else "none"
    if flag not in ("nf4", "none"):
        raise ValueError(f"--quantize is auto, nf4 or none, not {flag!r}")
    return "nf4" if flag == "nf4" else "none"


@dataclass(frozen=True)
class PipelineConfig:
    model_path: Path
    device: str = "cpu"
    quantize: Quantize = "none"
    dtype: torch.dtype | None = None  # None: bfloat16 on CUDA, float32 on CPU

    def __post_init__(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(
                f"device {self.device} asked for, but no CUDA GPU is visible; use device cpu without quantisation"
            )
        if self.quantize == "nf4" and not self.device.startswith("cuda"):
            raise InputError(
                f"NF4 quantisation needs a CUDA GPU (bitsandbytes refuses to run without one), not device "
                f"{self.device}; use quantize none"
            )

    @property
    def compute_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.bfloat16 if self.device.startswith("cuda") else torch.float32


def _is_prequantized(transformer_dir: Path) -> bool:
    config = json.loads((transformer_dir / "config.json").read_text())
    return "quantization_config" in config


def _check_snapshot(model_path: Path) -> None:
    if not (model_path / "model_index.json").is_file():
        raise InputError(
            f"{model_path} is not a diffusers snapshot (no model_index.json); pass the FLUX.2 snapshot's root folder"
        )
    for component in ("transformer", "vae", "scheduler"):
        if not (model_path / component).is_dir():
            raise InputError(f"{model_path} has no {component}/ folder; is it a complete FLUX.2 snapshot?")


def load_transformer(config: PipelineConfig) -> Any:
    """The DiT, quantised to NF4 if asked (or if the snapshot was saved quantised)."""
    from diffusers import BitsAndBytesConfig, Flux2Transformer2DModel

    transformer_dir = config.model_path / "transformer"
    kwargs: dict[str, Any] = {"dtype": config.compute_dtype}
    if config.quantize == "nf4" and not _is_prequantized(transformer_dir):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=config.compute_dtype,
        )
    if config.quantize == "nf4" or _is_prequantized(transformer_dir):
        kwargs["device_map"] = config.device  # quantised weights are placed while they load
    return Flux2Transformer2DModel.from_pretrained(transformer_dir, **kwargs)


def load_pipeline(config: PipelineConfig) -> Any:
    """The snapshot's pipeline with `text_encoder=None, tokenizer=None`: prompts must come as `prompt_embeds`."""
    import diffusers

    pipeline_class = getattr(diffusers, model_kind(config.model_path).pipeline)
    transformer = load_transformer(config)
    pipeline = pipeline_class.from_pretrained(
        config.model_path,
        transformer=transformer,
        text_encoder=None,
        tokenizer=None,
        dtype=config.compute_dtype,
    )
    pipeline.vae.to(config.device)
    if not getattr(transformer, "is_quantized", False):
        transformer.to(config.device)
    return pipeline


def size_multiple(vae_config: Mapping[str, Any]) -> int:
    """Height and width must be multiples of this: the VAE's downscale times the 2x2 latent patch."""
    return int(2 ** (len(vae_config["block_out_channels"]) - 1) * 2)


def joint_attention_dim(transformer_config: Mapping[str, Any]) -> int:
    """The transformer's text-embedding width: what the encoder's stacked layers must add up to."""
    return int(transformer_config["joint_attention_dim"])


def read_component_config(model_path: Path, component: str) -> dict[str, Any]:
    """A component's `config.json`, so checks can run before any weights load."""
    _check_snapshot(model_path)
    path = model_path / component / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}; is it a complete FLUX.2 snapshot?") from error
    if not isinstance(config, dict):
        raise InputError(f"{path} does not hold a JSON object; is it a complete FLUX.2 snapshot?")
    return config
