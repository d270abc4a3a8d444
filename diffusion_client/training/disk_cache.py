"""One tensor per file, written atomically and read back only if whole: the caption and latent caches' storage;
and how training says that something could not be written (`OutputError`, with `why_not_written`'s reason)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import safetensors.torch
import torch

from diffusion_client.atomic_files import write_bytes
from diffusion_client.errors import InputError

FULL_DISK = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk full (quota exceeded)",
    errno.EFBIG: "disk full (file size limit reached)",
}
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors' writer reports the OSError beneath it


class OutputError(InputError):
    """A checkpoint, the LoRA or a cache file could not be written (a full disk, a folder without write access).
    Exit 2, as an output flux2-generate cannot write."""


def why_not_written(error: Exception) -> str:
    """A failed write in a few words: "disk full" for ENOSPC, EDQUOT and EFBIG, else the system's reason."""
    number = error.errno if isinstance(error, OSError) else None
    if number is None and (found := RUST_OS_ERROR.search(str(error))):
        number = int(found[1])
    if number in FULL_DISK:
        return FULL_DISK[number]
    where = f" ({error.filename})" if isinstance(error, OSError) and error.filename else ""
    reason = os.strerror(number) if number is not None else " ".join(str(error).split())[:160]
    return reason + where


def write_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors to `path`, whole or not at all."""
    try:
        write_bytes(path, safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))
    except OSError as error:
        raise OutputError(f"could not write {path}: {why_not_written(error)}") from None


def read_cached(path: Path, key: str) -> torch.Tensor | None:
    """The tensor cached at `path`, or None; a damaged file is removed (to be made again), never trusted."""
    if not path.is_file():
        return None
    try:
        return safetensors.torch.load_file(path)[key]
    except Exception:  # truncated, not safetensors, or without `key`
        path.unlink(missing_ok=True)
        return None
