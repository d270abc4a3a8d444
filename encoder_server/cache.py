"""The embedding cache: an LRU of ready-to-send prompt embeddings, bounded in bytes.

Entries are `shared.wire.WireRow`s, one prompt's embedding already framed and checksummed for the wire,
so a hit sends the very bytes a computation sent, with no model call and no copy. The key holds
everything the embedding depends on: the weights' fingerprint, the prompt, the padded length and the
layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.lru import ByteBoundedLRU, CacheKey
from shared.wire import WireRow


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    coalesced: int
    evictions: int
    bytes: int
    entries: int
    capacity: int


class EmbeddingCache(ByteBoundedLRU[CacheKey, WireRow]):
    """Least recently used `WireRow`s whose frames together never exceed `capacity_bytes`."""

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes, lambda row: row.nbytes)
        self.coalesced = 0  # counted by the engine: prompts that waited on an identical computation

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            coalesced=self.coalesced,
            evictions=self.evictions,
            bytes=self.bytes,
            entries=len(self),
            capacity=self.capacity_bytes,
        )
