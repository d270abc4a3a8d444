"""`PATH[:SCALE]`, the way a LoRA is named on the command line and in a prompts file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from diffusion_client.errors import InputError

MAX_LORA_SCALE = 100.0  # far beyond any useful strength: past it, a scale is a typo


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and the strength it is applied with (1.0: as trained)."""

    path: Path
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and abs(self.scale) <= MAX_LORA_SCALE):
            raise InputError(
                f"LoRA {self.path}: scale must be a finite number between -{MAX_LORA_SCALE:g} and "
                f"{MAX_LORA_SCALE:g}, not {self.scale}"
            )


def parse_lora_spec(text: str) -> LoraSpec:
    """`file.safetensors` (scale 1) or `file.safetensors:0.8`; a suffix that is not a number is part of the path."""
    if not text.strip():
        raise InputError("--lora needs a file path, as PATH or PATH:SCALE")
    path, colon, suffix = text.rpartition(":")
    if colon and path:
        try:
            scale = float(suffix)
        except ValueError:
            return LoraSpec(Path(text))
        return LoraSpec(Path(path), scale)
    return LoraSpec(Path(text))
