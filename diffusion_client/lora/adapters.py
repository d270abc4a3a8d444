"""Switch LoRAs on a loaded pipeline between jobs, without reloading the DiT.

Each file is loaded once, as an adapter named after its hash: read by safetensors alone (`files.read_lora`, the
bytes whose hash was checked, never a path diffusers might unpickle), then handed to diffusers' own
`load_lora_into_transformer` with its adapter settings, as `load_lora_weights` does (so a file gives the same
image here as in diffusers); a job then activates its adapters at its scales with
`set_adapters`, and a job without LoRAs turns them all off. On an NF4 DiT the adapters stay unfused: fusing
into 4-bit weights would dequantise and round them again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffusion_client.errors import InputError
from diffusion_client.lora.files import CheckedLora, read_lora


@dataclass(frozen=True)
class AppliedLora:
    """A checked file at a scale: what one job asks for."""

    lora: CheckedLora
    scale: float

    def describe(self) -> dict[str, Any]:
        """What an image's metadata records: the file's name, its hash and the scale."""
        return {"file": self.lora.path.name, "sha256": self.lora.sha256, "scale": self.scale}


MAX_LOADED = 8  # adapters kept loaded: a long-running page would otherwise keep every LoRA anyone ever picked


class LoraAdapters:
    """The adapters loaded into one pipeline, and which are active. Past `max_loaded`, the adapter used longest
    ago is deleted (and loaded again if a later job asks for it)."""

    def __init__(self, pipeline: Any, max_loaded: int = MAX_LOADED) -> None:
        self._pipeline = pipeline
        self._max_loaded = max_loaded
        self._loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._active: tuple[tuple[str, float], ...] = ()

    @property
    def loaded(self) -> list[str]:
        """Adapter names loaded now, least recently used first."""
        return list(self._loaded)

    def activate(self, loras: Sequence[AppliedLora]) -> None:
        """Make exactly `loras` active at their scales (none: the plain model)."""
        wanted = tuple((applied.lora.adapter_name, applied.scale) for applied in loras)
        if wanted == self._active:
            return
        for applied in loras:
            name = applied.lora.adapter_name
            if name not in self._loaded:
                self._load(applied.lora)
            self._loaded[name] = None
            self._loaded.move_to_end(name)
        if wanted:
            names, scales = zip(*_merged(wanted), strict=True)
            self._pipeline.enable_lora()
            self._pipeline.set_adapters(list(names), list(scales))
        elif self._loaded:
            self._pipeline.disable_lora()
        self._active = wanted
        self._evict({name for name, _ in wanted})

    def _load(self, lora: CheckedLora) -> None:
        contents = read_lora(lora.path)
        if contents.sha256 != lora.sha256:  # the file was replaced since the preflight checked it
            raise InputError(f"LoRA {lora.path} changed since it was checked; run again to check the new file")
        pipeline = self._pipeline
        pipeline.load_lora_into_transformer(
            contents.state_dict,
            transformer=pipeline.transformer,
            adapter_name=lora.adapter_name,
            metadata=contents.adapter_metadata or None,  # rank and alpha as trained; None: inferred, as diffusers does
            _pipeline=pipeline,  # as load_lora_weights passes them: offloading paused while the adapter loads,
            low_cpu_mem_usage=True,  # and no random initialisation of weights about to be overwritten
        )

    def _evict(self, active: set[str]) -> None:
        spare = [name for name in self._loaded if name not in active]
        while len(self._loaded) > self._max_loaded and spare:
            name = spare.pop(0)
            self._pipeline.delete_adapters(name)
            del self._loaded[name]


def _merged(wanted: tuple[tuple[str, float], ...]) -> list[tuple[str, float]]:
    """One entry per adapter: the same file listed twice applies once, at the sum of its scales."""
    scales: dict[str, float] = {}
    for name, scale in wanted:
        scales[name] = scales.get(name, 0.0) + scale
    return list(scales.items())
