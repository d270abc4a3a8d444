"""The client's prompt-embedding cache: least recently used rows, bounded in bytes, shared by threads.

A generation job list often repeats a prompt with other seeds; with the cache, `RemoteTextEncoder` fetches
each (model, prompt, length, layers) once. Rows are stored as their own compact tensors and never handed
out: callers get fresh tensors built from them, so changing a result in place cannot change the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

# (weights fingerprint, prompt, max_sequence_length, hidden_state_layers): what decides one row's values.
CacheKey = tuple[str, str, int, tuple[int, ...]]


class EmbeddingCache:
    """`max_bytes` of prompt embeddings `[max_sequence_length, D]`; the least recently used go first."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache_bytes must be 0 (off) or more, not {max_bytes}")
        self.max_bytes = max_bytes
        self._rows: OrderedDict[CacheKey, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Bytes held now; never more than `max_bytes`."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: CacheKey) -> torch.Tensor | None:
        """The stored row, now the most recently used; the caller copies it, never changes it."""
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                self._rows.move_to_end(key)
            return row

    def put(self, key: CacheKey, row: torch.Tensor) -> None:
        """Keep a compact copy of `row`, evicting the least recently used; a row over the budget is not kept."""
        size = row.numel() * row.element_size()
        if size > self.max_bytes:
            return
        stored = row.detach().clone()  # its own storage: not a view keeping a whole batch alive, not the caller's
        with self._lock:
            old = self._rows.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            while self._rows and self._bytes + size > self.max_bytes:
                _, evicted = self._rows.popitem(last=False)
                self._bytes -= evicted.numel() * evicted.element_size()
            self._rows[key] = stored
            self._bytes += size
