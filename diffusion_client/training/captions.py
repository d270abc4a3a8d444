"""Caption embeddings from the encoder server, each distinct caption fetched once and kept on disk.

The cache holds one safetensors file per caption under `<cache>/captions/<fingerprint>/<sha256(caption)>`, the
fingerprint being the server's (its weights, chat template and quantisation): another encoder never answers
from it, and a restart or a second run fetches nothing it already has. Files are written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.training.disk_cache import read_cached, write_atomically

KEY = "prompt_embeds"


@dataclass(frozen=True)
class CaptionStats:
    fetched: int  # captions the server encoded for this run
    from_disk: int


def caption_file(folder: Path, caption: str) -> Path:
    return folder / f"{hashlib.sha256(caption.encode()).hexdigest()}.safetensors"


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
        cached = read_cached(caption_file(folder, caption), KEY)
        if cached is None:
            missing.append(caption)
        else:
            embeds[caption] = cached
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
