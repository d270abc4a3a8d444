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
        name, cell = row
        scale = _scale(name, cell)
        if scale is None:
            continue
        if not isinstance(name, str) or name not in offered:
            raise InputError(f"LoRA {str(name)[:80]!r} is not in the LoRA folder; press Refresh and pick again")
        assert folder is not None  # a name was offered, so there is a folder
        try:
            specs.append(LoraSpec(folder / name, scale))
        except InputError as error:  # named as the page lists it, not by where the server keeps it
            raise InputError(str(error).replace(str(folder / name), name)) from None
    if len(specs) > MAX_APPLIED:
        raise InputError(f"{len(specs)} LoRAs chosen; the limit is {MAX_APPLIED}")
    return tuple(specs)


def _scale(name: object, cell: object) -> float | None:
    """A scale cell as a number; None for off (0, or a cell left empty: a table sends that as None, "" or NaN)."""
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        return None
    if isinstance(cell, str):
        try:
            number = float(cell)
        except ValueError:
            raise InputError(f"LoRA {str(name)[:80]}: scale must be a number, not {cell[:40]!r}") from None
    elif isinstance(cell, int | float) and not isinstance(cell, bool):
        number = float(cell)
    else:
        raise InputError(f"LoRA {str(name)[:80]}: scale must be a number")
    if number != number or number == 0:  # NaN: the table's empty cell
        return None
    return number
