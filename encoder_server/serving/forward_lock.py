"""One forward lock per device, shared by every model a server runs there.

Each model has its own batcher and forward thread. Two models on one GPU would otherwise run passes at the same
time, their largest batches' activations adding up, so the peak each warm-up measured alone would not be the real
one. Taking the device's lock around every pass (and the warm-up's) makes models on one device take turns, while
models on different devices still run side by side.
"""

from __future__ import annotations

import threading

import torch

_locks: dict[str, threading.Lock] = {}
_registry = threading.Lock()


def device_key(device: str) -> str:
    """One name per device: `cuda` is the current CUDA device (`cuda:0`), `cpu:0` is `cpu`."""
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return "cpu"
    if parsed.index is None and parsed.type == "cuda":
        return f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"
    return str(parsed)


def forward_lock(device: str) -> threading.Lock:
    """The lock every forward pass on `device` holds."""
    with _registry:
        return _locks.setdefault(device_key(device), threading.Lock())
