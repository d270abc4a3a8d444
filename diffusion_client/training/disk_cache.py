"""One tensor per file, written atomically and read back only if whole: the caption and latent caches' storage."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import safetensors.torch
import torch


def write_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors to a temporary file in the same folder, flushed, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata=metadata)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_cached(path: Path, key: str) -> torch.Tensor | None:
    """The tensor cached at `path`, or None; a damaged file is removed (to be made again), never trusted."""
    if not path.is_file():
        return None
    try:
        return safetensors.torch.load_file(path)[key]
    except Exception:  # truncated, not safetensors, or without `key`
        path.unlink(missing_ok=True)
        return None
