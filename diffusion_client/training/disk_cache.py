"""One tensor per file, written atomically and read back only if whole: the caption and latent caches' storage."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from diffusion_client.atomic_files import write_bytes


def write_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors to `path`, whole or not at all."""
    write_bytes(path, safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def read_cached(path: Path, key: str) -> torch.Tensor | None:
    """The tensor cached at `path`, or None; a damaged file is removed (to be made again), never trusted."""
    if not path.is_file():
        return None
    try:
        return safetensors.torch.load_file(path)[key]
    except Exception:  # truncated, not safetensors, or without `key`
        path.unlink(missing_ok=True)
        return None
