"""Fingerprints of weights: sha256 over a few named parts and samples of every safetensors file in a folder.

Sampling keeps this to a few MB of reads for a 48 GB checkpoint while still telling apart folders whose
weights differ (random vs. trained, or another fine-tune). The encoder server fingerprints its text encoder
with it; LoRA training records the transformer's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

SAMPLES_PER_FILE = 16
SAMPLE_BYTES = 64 * 1024


def safetensors_samples(path: Path) -> Iterator[bytes]:
    """The file's header (names, dtypes, shapes) and evenly spaced slices of its tensor data."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        yield handle.read(header_length)
        data_start = 8 + header_length
        span = max(size - data_start - SAMPLE_BYTES, 0)
        for i in range(SAMPLES_PER_FILE):
            handle.seek(data_start + span * i // max(SAMPLES_PER_FILE - 1, 1))
            yield handle.read(SAMPLE_BYTES)


def weights_fingerprint(folder: Path, parts: Iterable[bytes]) -> str:
    """sha256 over `parts` (in order), then each `*.safetensors` file's name, size and samples."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(weights.name.encode())
        digest.update(str(weights.stat().st_size).encode())
        for sample in safetensors_samples(weights):
            digest.update(sample)
    return digest.hexdigest()
