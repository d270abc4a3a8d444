"""Checkpoints (adapter, optimizer and RNG state) written atomically, and the finished LoRA in diffusers' format.

A checkpoint is a folder `<out>/checkpoints/step-000250/` holding `adapter.safetensors`, `optimizer.pt` and
`state.json`; it is written under a temporary name (`.step-000250.<hex>.tmp`) and renamed into place, so a crash
or a full disk never leaves a half checkpoint that `--resume` would trust, and the staging folders a killed run
leaves are removed at the next start (`clean_staging`). A write that fails is one line naming the checkpoint and
the newest one still intact. The finished LoRA is what `Flux2Pipeline.save_lora_weights` writes
(`pytorch_lora_weights.safetensors`, keys `transformer.<module>.lora_A.weight`, the peft config as
`lora_adapter_metadata`), with how it was made added to the file's metadata.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from diffusion_client.atomic_files import sync_folder, write_bytes
from diffusion_client.errors import InputError
from diffusion_client.training.disk_cache import OutputError, why_not_written

CHECKPOINTS = "checkpoints"
LORA_FILE = "pytorch_lora_weights.safetensors"
STEP_FOLDER = re.compile(r"^step-(\d+)$")
KEEP_CHECKPOINTS = 2
# What our own writes stage, and only that, is removed at start: a checkpoint's folder, the LoRA's folder and
# the LoRA's temporary file (atomic_files' naming).
STAGING = {
    CHECKPOINTS: re.compile(r"^\.step-\d{6,}\.[0-9a-f]{8}\.tmp$"),
    ".": re.compile(r"^\.(lora-|pytorch_lora_weights\.)[0-9a-f]{8}\.tmp$"),
}


def _write_new(path: Path, data: bytes) -> None:
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _intact(out: Path) -> str:
    """Which checkpoint a failed write left for `--resume`."""
    found = checkpoints(out)
    if not found:
        return "no checkpoint was written yet"
    return f"checkpoint {int(found[-1].name.removeprefix('step-'))} ({found[-1]}) is intact"


def save_checkpoint(
    out: Path, step: int, adapter: dict[str, torch.Tensor], optimizer: Any, state: dict[str, Any]
) -> Path:
    """Write checkpoint `step` atomically and drop all but the newest `KEEP_CHECKPOINTS`."""
    folder = out / CHECKPOINTS
    final = folder / f"step-{step:06d}"
    staging = folder / f".step-{step:06d}.{secrets.token_hex(4)}.tmp"
    optimizer_state = io.BytesIO()
    torch.save(optimizer.state_dict(), optimizer_state)
    files = {  # serialised in memory, so a failed write is an OSError saying why, not torch's or safetensors' own
        "adapter.safetensors": safetensors.torch.save({k: v.detach().contiguous().cpu() for k, v in adapter.items()}),
        "optimizer.pt": optimizer_state.getvalue(),
        "state.json": json.dumps({**state, "step": step}, indent=1).encode(),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        for name, data in files.items():
            _write_new(staging / name, data)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        sync_folder(folder)
    except OSError as error:
        raise OutputError(f"could not write checkpoint {step}: {why_not_written(error)}; {_intact(out)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_staging(out: Path) -> int:
    """Remove what a run killed mid-write left staged under `out`; how many were removed."""
    removed = 0
    for where, pattern in STAGING.items():
        folder = out / where
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if pattern.match(path.name) and not path.is_symlink():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
    return removed


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under `out`, oldest first."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(match[1]), path) for path in folder.iterdir() if (match := STEP_FOLDER.match(path.name))]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(resume: Path) -> Path:
    """`--resume` names a checkpoint folder, or a training output folder (its newest checkpoint)."""
    if (resume / "state.json").is_file():
        return resume
    found = checkpoints(resume)
    if not found:
        raise InputError(f"--resume {resume}: no checkpoint there (a step-NNNNNN folder, or an --out folder with some)")
    return found[-1]


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's `state.json`: its step and the settings it was trained with (seed, rank, alpha, steps)."""
    try:
        state = json.loads((checkpoint / "state.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            f"--resume {checkpoint}: the checkpoint cannot be read ({' '.join(str(error).split())[:160]})"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise InputError(f"--resume {checkpoint}: its state.json names no step; the checkpoint is damaged")
    return state


def load_checkpoint(path: Path, optimizer: Any) -> dict[str, torch.Tensor]:
    """The adapter weights; the optimizer's state is loaded in place."""
    try:
        adapter = safetensors.torch.load_file(path / "adapter.safetensors")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    except (OSError, ValueError, KeyError, RuntimeError, safetensors.SafetensorError) as error:
        raise InputError(
            f"--resume {path}: the checkpoint cannot be read ({' '.join(str(error).split())[:160]})"
        ) from None
    return adapter


def save_lora(out: Path, adapter: dict[str, torch.Tensor], lora_config: dict[str, Any], made: dict[str, str]) -> Path:
    """`pytorch_lora_weights.safetensors` as diffusers writes it, plus `made` in its metadata; atomic."""
    from diffusers import Flux2Pipeline

    target = out / LORA_FILE
    staging = out / f".lora-{secrets.token_hex(4)}.tmp"
    try:
        staging.mkdir()
        Flux2Pipeline.save_lora_weights(
            staging, transformer_lora_layers=adapter, transformer_lora_adapter_metadata=lora_config
        )
        written = staging / LORA_FILE
        with safetensors.safe_open(written, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = safetensors.torch.load_file(written)
        metadata.update({f"flux2_split.{k}": v for k, v in made.items()})
        write_bytes(target, safetensors.torch.save(tensors, metadata=metadata))
    except (OSError, safetensors.SafetensorError) as error:
        raise OutputError(f"could not write the LoRA {target}: {why_not_written(error)}; {_intact(out)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
