"""Check a LoRA file against the transformer it will be applied to, before any weights load.

diffusers refuses some bad files loudly but loads others with only a warning (keys for modules that do not
exist, a missing half of a pair, a file whose keys all convert to nothing), so the image is made without the
LoRA and nobody notices. Here every such file is refused in one line naming it: not safetensors, no LoRA
weights, keys that match no layer of this transformer, or shapes for another model (a klein or FLUX.1 LoRA
against FLUX.2-dev). The checks run against the transformer's layer shapes, built from its `config.json` on
torch's meta device (no memory).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusion_client.errors import InputError

TRANSFORMER_PREFIX = "transformer."
# `<module>.lora_A.weight` / `.lora_B.weight` (diffusers/peft), optionally `.lora_B.bias`.
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<half>[AB])(?:\.(?P<adapter>[^.]+))?\.(?P<kind>weight|bias)$")
HASH_CHUNK = 1024 * 1024

LayerShapes = Mapping[str, tuple[int, int]]  # module name -> (in_features, out_features), for every Linear


@dataclass(frozen=True)
class CheckedLora:
    """A LoRA file that fits this transformer: its hash (for the image's metadata) and its adapter name."""

    path: Path
    sha256: str
    rank: int
    modules: int  # layers it changes
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def adapter_name(self) -> str:
        return f"lora_{self.sha256[:16]}"


def layer_shapes(transformer_config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Every Linear layer of the transformer this config describes, built on the meta device."""
    import torch
    from diffusers import Flux2Transformer2DModel

    config = {key: value for key, value in transformer_config.items() if not key.startswith("_")}
    with torch.device("meta"):
        skeleton = Flux2Transformer2DModel.from_config(config)
    return {
        name: (module.in_features, module.out_features)
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_lora(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's state dict in diffusers' layout (converted from kohya's or BFL's) and its metadata."""
    from diffusers import Flux2Pipeline
    from safetensors import SafetensorError

    if not path.is_file():
        raise InputError(f"LoRA {path}: no such file")
    try:
        with path.open("rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
        if header_length < 2 or header_length > path.stat().st_size - 8:
            raise InputError(f"LoRA {path}: not a safetensors file (its first 8 bytes are no header length)")
        state_dict, metadata = Flux2Pipeline.lora_state_dict(str(path), return_lora_metadata=True)
    except InputError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"LoRA {path}: cannot be read as a FLUX.2 LoRA in safetensors ({reason})") from None
    return state_dict, dict(metadata or {})


def check_lora(path: Path, layers: LayerShapes) -> CheckedLora:
    """Refuse, naming the file, anything that would not change this transformer exactly as its keys say."""
    state_dict, metadata = read_lora(path)
    keys = [key.removeprefix(TRANSFORMER_PREFIX) for key in state_dict]
    if not keys:
        raise InputError(f"LoRA {path}: holds no LoRA weights a FLUX.2 transformer can use")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in zip(keys, state_dict.values(), strict=True):
        match = LORA_KEY.match(key)
        if match is None:
            raise InputError(
                f"LoRA {path}: {key[:120]!r} is not a LoRA weight (LoKr and other adapters are not supported)"
            )
        module = match["module"]
        if module not in layers:
            raise InputError(
                f"LoRA {path}: its key {key[:120]!r} matches no layer of this transformer; is it for another model "
                "(FLUX.1, FLUX.2 [klein], SDXL)?"
            )
        if match["kind"] == "weight":
            pairs.setdefault(module, {})[match["half"]] = tuple(tensor.shape)
    ranks = set()
    for module, halves in pairs.items():
        if set(halves) != {"A", "B"}:
            missing = ({"A", "B"} - set(halves)).pop()
            raise InputError(f"LoRA {path}: {module} has no lora_{missing} weight; the file is incomplete")
        in_features, out_features = layers[module]
        a, b = halves["A"], halves["B"]
        if len(a) != 2 or len(b) != 2 or a[1] != in_features or b[0] != out_features or a[0] != b[1]:
            raise InputError(
                f"LoRA {path}: shapes for another model: {module} takes {in_features} and gives {out_features} "
                f"features here, the file has lora_A {list(a)} and lora_B {list(b)}"
            )
        ranks.add(a[0])
    return CheckedLora(path, file_sha256(path), max(ranks), len(pairs), metadata)
