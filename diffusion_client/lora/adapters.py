"""Switch LoRAs on a loaded pipeline between jobs, without reloading the DiT.

Each file is loaded once, as an adapter named after its hash, through diffusers' own `load_lora_weights` (so a
file gives the same image here as in diffusers); a job then activates its adapters at its scales with
`set_adapters`, and a job without LoRAs turns them all off. On an NF4 DiT the adapters stay unfused: fusing
into 4-bit weights would dequantise and round them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffusion_client.lora.files import CheckedLora


@dataclass(frozen=True)
class AppliedLora:
    """A checked file at a scale: what one job asks for."""

    lora: CheckedLora
    scale: float

    def describe(self) -> dict[str, Any]:
        """What an image's metadata records: the file's name, its hash and the scale."""
        return {"file": self.lora.path.name, "sha256": self.lora.sha256, "scale": self.scale}


class LoraAdapters:
    """The adapters loaded into one pipeline, and which are active."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._loaded: set[str] = set()
        self._active: tuple[tuple[str, float], ...] = ()

    def activate(self, loras: Sequence[AppliedLora]) -> None:
        """Make exactly `loras` active at their scales (none: the plain model)."""
        wanted = tuple((applied.lora.adapter_name, applied.scale) for applied in loras)
        if wanted == self._active:
            return
        for applied in loras:
            name = applied.lora.adapter_name
            if name not in self._loaded:
                self._pipeline.load_lora_weights(str(applied.lora.path), adapter_name=name)
                self._loaded.add(name)
        if wanted:
            names, scales = zip(*_merged(wanted), strict=True)
            self._pipeline.enable_lora()
            self._pipeline.set_adapters(list(names), list(scales))
        elif self._loaded:
            self._pipeline.disable_lora()
        self._active = wanted


def _merged(wanted: tuple[tuple[str, float], ...]) -> list[tuple[str, float]]:
    """One entry per adapter: the same file listed twice applies once, at the sum of its scales."""
    scales: dict[str, float] = {}
    for name, scale in wanted:
        scales[name] = scales.get(name, 0.0) + scale
    return list(scales.items())
