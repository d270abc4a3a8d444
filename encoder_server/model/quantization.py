"""8-bit and 4-bit text encoders through transformers' own bitsandbytes integration.

A bf16 snapshot is quantised while it loads (`--quantize int8|nf4`); a snapshot saved quantised (its
`text_encoder/config.json` carries a `quantization_config`, as `diffusers/FLUX.2-dev-bnb-4bit` ships it)
loads as it is. Quantised embeddings are close to bf16, not equal: see the README's table.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from encoder_server.errors import ModelLoadError

Quantization = Literal["none", "int8", "nf4"]  # as `encoder_server.config.QUANTIZE_CHOICES`


def saved_quantization(config: Any) -> str:
    """How a checkpoint's config says its weights were saved: "none", "int8", "nf4" (or "fp4")."""
    saved = getattr(config, "quantization_config", None)
    if saved is None:
        return "none"
    settings = saved if isinstance(saved, dict) else saved.to_dict()
    if settings.get("quant_method") != "bitsandbytes":
        raise ModelLoadError(
            f"the text encoder is saved with {settings.get('quant_method')!r} quantisation; only bitsandbytes "
            "(int8, nf4) or unquantised snapshots are supported"
        )
    if settings.get("load_in_8bit"):
        return "int8"
    return str(settings.get("bnb_4bit_quant_type", "nf4"))


def resolve_quantization(requested: Quantization | None, saved: str) -> str:
    """The mode to serve: the snapshot's own when it is saved quantised, else what was asked (default none)."""
    if saved == "none":
        return requested or "none"
    if requested not in (None, saved):
        raise ModelLoadError(
            f"the snapshot's text encoder is saved quantised as {saved}, so it cannot be served as {requested}; "
            f"drop --quantize or pass --quantize {saved}"
        )
    return saved


def bitsandbytes_config(mode: Quantization, compute_dtype: torch.dtype) -> Any:
    """transformers' `BitsAndBytesConfig` for quantising a bf16 checkpoint while it loads."""
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
