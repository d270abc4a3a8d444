"""Caption embeddings from the encoder server, each distinct caption fetched once and kept on disk.

The cache holds one safetensors file per caption under `<cache>/captions/<fingerprint>/<sha256(caption)>`, the
fingerprint being the server's (its weights, chat template and quantisation): another encoder never answers
from it, and a restart or a second run fetches nothing it already has. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from diffusion_client.remote_encoder import RemoteTextEncoder

KEY = "prompt_embeds"


@dataclass(frozen=True)
class CaptionStats:
    fetched: int  # captions the server encoded for this run
    from_disk: int


def caption_file(folder: Path, caption: str) -> Path:
    return folder / f"{hashlib.sha256(caption.encode()).hexdigest()}.safetensors"


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


def caption_embeddings(
    encoder: RemoteTextEncoder, captions: Sequence[str], cache: Path
) -> tuple[dict[str, torch.Tensor], CaptionStats]:
    """`{caption: prompt_embeds [512, D]}` for every distinct caption, fetching only those not on disk, in batches
    the server takes."""
    info = encoder.info()
    folder = cache / "captions" / info.fingerprint[:32]
    distinct = list(dict.fromkeys(captions))
    embeds: dict[str, torch.Tensor] = {}
    missing = []
    for caption in distinct:
        path = caption_file(folder, caption)
        if path.is_file():
            try:
                embeds[caption] = safetensors.torch.load_file(path)[KEY]
                continue
            except Exception:  # a damaged cache file is fetched again, not trusted
                path.unlink(missing_ok=True)
        missing.append(caption)
    batch = max(info.max_prompts_per_request, 1)
    for start in range(0, len(missing), batch):
        chunk = missing[start : start + batch]
        fetched = encoder.encode(chunk)  # [len(chunk), 512, D]
        for caption, row in zip(chunk, fetched, strict=True):
            row = row.clone()  # its own storage, so the file holds one row, not the batch
            write_atomically(
                {KEY: row}, caption_file(folder, caption), {"caption_sha256": caption_file(folder, caption).stem}
            )
            embeds[caption] = row
    return embeds, CaptionStats(fetched=len(missing), from_disk=len(distinct) - len(missing))
