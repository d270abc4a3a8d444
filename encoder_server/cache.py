"""The embedding cache: an LRU of ready-to-send prompt embeddings, bounded in bytes.

Entries are `shared.wire.WireRow`s, one prompt's embedding already framed and checksummed for the wire,
so a hit sends the very bytes a computation sent, with no model call and no copy. The key holds
everything the embedding depends on: the weights' fingerprint, the prompt, the padded length and the
layers. Touched only on the event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from shared.wire import WireRow


class CacheKey(NamedTuple):
    fingerprint: str
    prompt: str
    max_sequence_length: int
    hidden_state_layers: tuple[int, ...]


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    coalesced: int
    evictions: int
    bytes: int
    entries: int
    capacity: int


class EmbeddingCache:
    """Least recently used `WireRow`s whose frames together never exceed `capacity_bytes`."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._rows: OrderedDict[CacheKey, WireRow] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.coalesced = 0  # counted by the engine: prompts that waited on an identical computation
        self.evictions = 0

    def get(self, key: CacheKey) -> WireRow | None:
        row = self._rows.get(key)
        if row is None:
            self.misses += 1
            return None
        self._rows.move_to_end(key)
        self.hits += 1
        return row

    def put(self, key: CacheKey, row: WireRow) -> None:
        """Keep `row`, evicting the least recently used entries to make room; a row over the budget is not kept."""
        size = row.nbytes
        if size > self.capacity_bytes or key in self._rows:
            return
        while self.bytes + size > self.capacity_bytes:
            _, evicted = self._rows.popitem(last=False)
            self.bytes -= evicted.nbytes
            self.evictions += 1
        self._rows[key] = row
        self.bytes += size

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            coalesced=self.coalesced,
            evictions=self.evictions,
            bytes=self.bytes,
            entries=len(self._rows),
            capacity=self.capacity_bytes,
        )
