"""The embedding cache: ready-to-send prompt embeddings, least recently used first out, with a byte share per caller.

Entries are `shared.wire.WireRow`s, one prompt's embedding already framed and checksummed for the wire,
so a hit sends the very bytes a computation sent, with no model call and no copy. The key holds
everything the embedding depends on: the weights' fingerprint, the prompt, the padded length and the
layers.

Privacy and fairness: by default each caller (token name) has a cache of its own, so a hit never tells one
caller what another has encoded. With `shared=True` every caller finds every entry (a team sharing work, who
accept that a fast reply shows a prompt was sent before). Either way an entry is charged to the caller whose
request computed it, and each caller's entries are held to an equal share of the budget, so no caller can
evict another's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from shared.lru import ByteBoundedLRU, CacheKey
from shared.wire import WireRow

SHARED_SCOPE = ""
ScopedKey = tuple[str, CacheKey]  # (the caller whose cache it is, or SHARED_SCOPE; the embedding's key)


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    coalesced: int
    evictions: int
    bytes: int
    entries: int
    capacity: int


class ReplyCache:
    """`WireRow`s by caller: each caller's own LRU, bounded to `capacity_bytes` / number of callers."""

    def __init__(self, capacity_bytes: int, shared: bool = False, callers: Iterable[str] = ()) -> None:
        self.capacity_bytes = capacity_bytes
        self.shared = shared
        self._lock = threading.Lock()
        self._owners: dict[ScopedKey, str] = {}  # which caller's LRU holds each key
        self._parts: dict[str, ByteBoundedLRU[ScopedKey, WireRow]] = {}
        self._callers = max(len(set(callers)), 1)
        self.hits = self.misses = self.evictions_of_gone = 0
        self.coalesced = 0  # counted by the engine: prompts that waited on an identical computation

    def scope(self, caller: str, key: CacheKey) -> ScopedKey:
        """The key a caller's request looks up (and single-flights on): its own unless the cache is shared."""
        return (SHARED_SCOPE if self.shared else caller, key)

    @property
    def share_bytes(self) -> int:
        """What one caller's entries may hold."""
        return self.capacity_bytes // self._callers

    def set_callers(self, callers: Iterable[str]) -> None:
        """The callers now allowed (after a tokens reload): shares follow their count, and the gone lose theirs."""
        names = set(callers)
        with self._lock:
            self._callers = max(len(names), 1)
            for gone in [name for name in self._parts if name not in names]:
                part = self._parts.pop(gone)
                self.evictions_of_gone += part.evictions + len(part)
                for key in [key for key, owner in self._owners.items() if owner == gone]:
                    del self._owners[key]
            parts = list(self._parts.values())
        for part in parts:
            part.resize(self.share_bytes)

    def get(self, key: ScopedKey) -> WireRow | None:
        with self._lock:
            owner = self._owners.get(key)
            part = None if owner is None else self._parts.get(owner)
        row = None if part is None else part.get(key)
        with self._lock:
            if row is None:
                self.misses += 1
            else:
                self.hits += 1
        return row

    def put(self, key: ScopedKey, row: WireRow, caller: str) -> None:
        """Keep `row`, charged to `caller` (who computed it)."""
        with self._lock:
            part = self._parts.get(caller)
            if part is None:
                part = self._parts[caller] = ByteBoundedLRU(self.share_bytes, _row_bytes, self._forget)
            previous = self._owners.get(key)
            if previous is not None and previous != caller:
                return  # already held, charged to whoever computed it first
            self._owners[key] = caller
        part.put(key, row)
        if row.nbytes > part.capacity_bytes:  # too large to keep: the LRU refused it
            with self._lock:
                self._owners.pop(key, None)

    def _forget(self, key: ScopedKey) -> None:
        with self._lock:
            self._owners.pop(key, None)

    def stats(self) -> CacheStats:
        with self._lock:
            parts = list(self._parts.values())
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            coalesced=self.coalesced,
            evictions=self.evictions_of_gone + sum(part.evictions for part in parts),
            bytes=sum(part.bytes for part in parts),
            entries=sum(len(part) for part in parts),
            capacity=self.capacity_bytes,
        )


def _row_bytes(row: WireRow) -> int:
    return row.nbytes
