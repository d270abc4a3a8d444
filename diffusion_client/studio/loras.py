"""The LoRAs `--lora-dir` offers: found by name under the folder, never a path the page makes up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusion_client.errors import InputError
from diffusion_client.lora.specs import LoraSpec

MAX_LISTED = 500  # a folder of thousands is a mistake; the page lists the first ones by name
MAX_APPLIED = 8  # each LoRA adds its layers to every step


def lora_names(folder: Path | None) -> list[str]:
    """`*.safetensors` under `folder` (subfolders too), as paths relative to it, sorted."""
    if folder is None:
        return []
    try:
        found = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors") if path.is_file())
    except OSError:
        return []  # the folder vanished or is unreadable: nothing to offer, the page still works
    return found[:MAX_LISTED]


def lora_rows(folder: Path | None) -> list[list[Any]]:
    """The page's table: one row per LoRA, scale 0 (off) until the user sets one."""
    return [[name, 0.0] for name in lora_names(folder)]


def chosen_loras(rows: Any, folder: Path | None) -> tuple[LoraSpec, ...]:
    """The rows with a non-zero scale as `LoraSpec`s; a name must be one `lora_names` offers."""
    if rows is None:
        return ()
    rows = getattr(rows, "values", rows)  # a pandas DataFrame from Gradio's table, or plain lists
    if hasattr(rows, "tolist"):
        rows = rows.tolist()
    if not isinstance(rows, list):
        raise InputError("the LoRA table did not arrive as rows of name and scale; reload the page")
    offered = set(lora_names(folder))
    specs = []
    for row in rows:
        if not isinstance(row, list | tuple) or len(row) != 2:
            raise InputError("each LoRA row holds a name and a scale; reload the page")
        name, scale = row
        if scale in (None, "") or (isinstance(scale, int | float) and not isinstance(scale, bool) and scale == 0):
            continue
        if not isinstance(name, str) or name not in offered:
            raise InputError(f"LoRA {str(name)[:80]!r} is not in the LoRA folder; press Refresh and pick again")
        if isinstance(scale, str):
            try:
                scale = float(scale)
            except ValueError:
                raise InputError(f"LoRA {name}: scale must be a number, not {scale[:40]!r}") from None
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise InputError(f"LoRA {name}: scale must be a number")
        assert folder is not None  # a name was offered, so there is a folder
        specs.append(LoraSpec(folder / name, float(scale)))
    if len(specs) > MAX_APPLIED:
        raise InputError(f"{len(specs)} LoRAs chosen; the limit is {MAX_APPLIED}")
    return tuple(specs)
