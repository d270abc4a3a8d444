"""The client's prompt-embedding cache: least recently used rows, bounded in bytes, shared by threads.

A generation job list often repeats a prompt with other seeds; with the cache, `RemoteTextEncoder` fetches
each (model, prompt, length, layers) once. Rows are stored as their own compact tensors and never handed
out: callers get fresh tensors built from them, so changing a result in place cannot change the cache.
"""

from __future__ import annotations

import torch

from shared.lru import ByteBoundedLRU, CacheKey


class EmbeddingCache(ByteBoundedLRU[CacheKey, torch.Tensor]):
    """`max_bytes` of prompt embeddings `[max_sequence_length, D]`; the least recently used go first."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, lambda row: row.numel() * row.element_size())

    def put(self, key: CacheKey, row: torch.Tensor) -> None:
        """Keep a compact copy of `row`: not a view keeping a whole batch alive, and not the caller's tensor."""
        if self._size_of(row) <= self.capacity_bytes:  # no copy of a row that would not be kept
            super().put(key, row.detach().clone())
