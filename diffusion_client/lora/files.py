"""Check a LoRA file against the transformer it will be applied to, before any weights load.

diffusers refuses some bad files loudly but loads others with only a warning (keys for modules that do not
exist, a missing half of a pair, a file whose keys all convert to nothing), so the image is made without the
LoRA and nobody notices; and given a path, it unpickles any file that is not safetensors. Here a file is read
once, by safetensors alone (diffusers only ever gets the tensors), and every bad one is refused in one line
naming it: not a regular file, not safetensors, tensors that are not float32/float16/bfloat16 or hold NaN or
infinity, no LoRA weights, keys that match no layer of this transformer, or shapes for another model (a klein
or FLUX.1 LoRA against FLUX.2-dev). The checks run against the transformer's layer shapes, built from its
`config.json` on torch's meta device (no memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusion_client.errors import InputError

if TYPE_CHECKING:
    import torch

TRANSFORMER_PREFIX = "transformer."
# `<module>.lora_A.weight` / `.lora_B.weight` (diffusers/peft), optionally `.lora_B.bias`.
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<half>[AB])(?:\.(?P<adapter>[^.]+))?\.(?P<kind>weight|bias)$")
HASH_CHUNK = 1024 * 1024
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
FLOAT_DTYPES = {"F32", "F16", "BF16"}  # safetensors' names for float32, float16, bfloat16
DTYPE_NAMES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
               "U32": "uint32", "I64": "int64", "U64": "uint64", "F64": "float64"}  # fmt: skip
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where `save_lora_weights` keeps the peft config (rank, alpha)

LayerShapes = Mapping[str, tuple[int, int]]  # module name -> (in_features, out_features), for every Linear


@dataclass(frozen=True)
class CheckedLora:
    """A LoRA file that fits this transformer: its hash (for the image's metadata) and its adapter name."""

    path: Path
    sha256: str
    rank: int
    modules: int  # layers it changes
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)  # its `lora_adapter_metadata`, parsed

    @property
    def adapter_name(self) -> str:
        return f"lora_{self.sha256[:16]}"


@dataclass(frozen=True)
class LoraContents:
    """One read of a LoRA file: its weights in diffusers' layout, its adapter settings and the hash of the bytes
    they came from."""

    state_dict: dict[str, torch.Tensor]
    adapter_metadata: dict[str, Any]  # {"transformer.r": 16, "transformer.lora_alpha": 16, ...}; {}: the file has none
    sha256: str


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


def _read_safetensors(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and its safetensors header; anything else is refused before more than the header is read.

    Opened without blocking and checked with fstat, so a FIFO is refused instead of waiting for a writer."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"LoRA {path}: no such file") from None
    except OSError as error:
        raise InputError(f"LoRA {path}: cannot be read ({error.strerror or error})") from None
    try:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):
            raise InputError(f"LoRA {path} is a directory; give a .safetensors file")
        if not stat.S_ISREG(status.st_mode):
            raise InputError(f"LoRA {path} is not a regular file (a FIFO, socket or device); give a .safetensors file")
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            header = None
            if 2 <= length <= min(status.st_size - 8, MAX_HEADER_BYTES):
                header = _json_object(handle.read(length))
            if header is None:
                raise InputError(f"LoRA {path}: not a safetensors file (no safetensors header at its start)")
            _check_header(path, header)
            handle.seek(0)
            return handle.read(), header
    except OSError as error:
        raise InputError(f"LoRA {path}: cannot be read ({error.strerror or error})") from None
    finally:
        os.close(descriptor)


def _json_object(text: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested to exhaust the parser
        return None
    return parsed if isinstance(parsed, dict) else None


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """LoRA weights only, before their bytes are read (every layout's keys say `lora`; a DiT's do not), and
    floating-point ones: peft would take an int8 or bool file and fail once the DiT has loaded."""
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if "lora" not in name:
            raise InputError(
                f"LoRA {path}: {name[:120]!r} is not a LoRA weight (a whole model, or another kind of adapter?)"
            )
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(dtype, str):
            raise InputError(f"LoRA {path}: not a safetensors file (tensor {name[:120]!r} has no dtype)")
        if dtype not in FLOAT_DTYPES:
            raise InputError(
                f"LoRA {path}: tensor {name[:120]!r} is {DTYPE_NAMES.get(dtype, dtype)}; LoRA weights must be "
                "float32, float16 or bfloat16"
            )


def read_lora(path: Path) -> LoraContents:
    """The file's state dict in diffusers' layout (converted from kohya's or BFL's), its adapter settings and hash.

    safetensors parses the bytes; diffusers' `lora_state_dict` only ever sees the tensors, never the path, so
    nothing here can reach `torch.load`."""
    import safetensors.torch
    import torch
    from diffusers import Flux2Pipeline
    from safetensors import SafetensorError

    data, header = _read_safetensors(path)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"LoRA {path}: not a safetensors file ({reason})") from None
    del data
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"LoRA {path}: tensor {name[:120]!r} holds NaN or infinite values; it would blank every image"
            )
    adapter_metadata = _adapter_metadata(path, header.get("__metadata__"))
    try:
        state_dict = Flux2Pipeline.lora_state_dict(dict(tensors))
    except (ValueError, KeyError, IndexError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"LoRA {path}: cannot be read as a FLUX.2 LoRA ({reason})") from None
    return LoraContents(dict(state_dict), adapter_metadata, sha256)


def _adapter_metadata(path: Path, metadata: Any) -> dict[str, Any]:
    """The peft settings `save_lora_weights` stores as JSON, as diffusers would parse them from the file."""
    raw = metadata.get(ADAPTER_METADATA_KEY) if isinstance(metadata, dict) else None
    if not raw:
        return {}
    parsed = _json_object(raw.encode() if isinstance(raw, str) else b"")
    if parsed is None:
        raise InputError(f"LoRA {path}: its {ADAPTER_METADATA_KEY} is not a JSON object")
    return parsed


def check_lora(path: Path, layers: LayerShapes) -> CheckedLora:
    """Refuse, naming the file, anything that would not change this transformer exactly as its keys say."""
    contents = read_lora(path)
    state_dict = contents.state_dict
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
    return CheckedLora(path, contents.sha256, max(ranks), len(pairs), contents.adapter_metadata)
