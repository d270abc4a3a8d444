"""Checkpoints (adapter, optimizer and RNG state) written atomically, and the finished LoRA in diffusers' format.

A checkpoint is a folder `<out>/checkpoints/step-000250/` holding `adapter.safetensors`, `optimizer.pt` and
`state.json`; it is written under a temporary name and renamed into place, so a crash or a full disk never
leaves a half checkpoint that `--resume` would trust. The finished LoRA is what `Flux2Pipeline.save_lora_weights`
writes (`pytorch_lora_weights.safetensors`, keys `transformer.<module>.lora_A.weight`, the peft config as
`lora_adapter_metadata`), with how it was made added to the file's metadata.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from diffusion_client.errors import ClientError, InputError
from diffusion_client.training.disk_cache import write_atomically

CHECKPOINTS = "checkpoints"
LORA_FILE = "pytorch_lora_weights.safetensors"
STEP_FOLDER = re.compile(r"^step-(\d+)$")
KEEP_CHECKPOINTS = 2


class OutputError(ClientError):
    """A checkpoint or the LoRA could not be written (a full disk, a folder without write access)."""


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    out: Path, step: int, adapter: dict[str, torch.Tensor], optimizer: Any, state: dict[str, Any]
) -> Path:
    """Write checkpoint `step` atomically and drop all but the newest `KEEP_CHECKPOINTS`."""
    folder = out / CHECKPOINTS
    final = folder / f"step-{step:06d}"
    staging = folder / f".step-{step:06d}.{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        safetensors.torch.save_file(
            {k: v.detach().contiguous().cpu() for k, v in adapter.items()}, staging / "adapter.safetensors"
        )
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        for name in ("adapter.safetensors", "optimizer.pt", "state.json"):
            _sync(staging / name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _sync(folder)
    except OSError as error:
        raise OutputError(
            f"cannot write checkpoint {final}: {error.strerror or error}; the previous checkpoint is intact"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def load_checkpoint(path: Path, optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter weights and the state; the optimizer's state is loaded in place."""
    try:
        state = json.loads((path / "state.json").read_text())
        adapter = safetensors.torch.load_file(path / "adapter.safetensors")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise InputError(
            f"--resume {path}: the checkpoint cannot be read ({' '.join(str(error).split())[:160]})"
        ) from None
    return adapter, state


def save_lora(out: Path, adapter: dict[str, torch.Tensor], lora_config: dict[str, Any], made: dict[str, str]) -> Path:
    """`pytorch_lora_weights.safetensors` as diffusers writes it, plus `made` in its metadata; atomic."""
    from diffusers import Flux2Pipeline

    target = out / LORA_FILE
    try:
        with tempfile.TemporaryDirectory(prefix=".lora-", dir=out) as staging:
            Flux2Pipeline.save_lora_weights(
                staging, transformer_lora_layers=adapter, transformer_lora_adapter_metadata=lora_config
            )
            written = Path(staging) / LORA_FILE
            with safetensors.safe_open(written, framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            tensors = safetensors.torch.load_file(written)
        write_atomically(tensors, target, {**metadata, **{f"flux2_split.{k}": v for k, v in made.items()}})
    except OSError as error:
        raise OutputError(f"cannot write {target}: {error.strerror or error}") from None
    return target
