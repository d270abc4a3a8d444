"""A least-recently-used map bounded in bytes: the server's embedding cache and the client's both build on it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class CacheKey(NamedTuple):
    """What decides one prompt's embedding: the weights, the prompt, the padded length and the layers."""

    fingerprint: str
    prompt: str
    max_sequence_length: int
    hidden_state_layers: tuple[int, ...]


class ByteBoundedLRU(Generic[Key, Value]):
    """Values whose sizes (`size_of`) never add up to more than `capacity_bytes`; the least recently used go first.

    A value larger than the whole budget is not kept. Safe to share between threads.
    """

    def __init__(
        self,
        capacity_bytes: int,
        size_of: Callable[[Value], int],
        on_evict: Callable[[Key], None] = lambda key: None,
    ) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"cache_bytes must be 0 (off) or more, not {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._size_of = size_of
        self._on_evict = on_evict  # told of each key dropped to make room, under the lock
        self._values: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: Key) -> Value | None:
        """The value, now the most recently used, or None (counted as a miss)."""
        with self._lock:
            value = self._values.get(key)
            if value is None:
                self.misses += 1
                return None
            self._values.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Key, value: Value) -> None:
        """Keep `value` under `key` (replacing what was there), evicting the least recently used to make room."""
        size = self._size_of(value)
        if size > self.capacity_bytes:
            return
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self.bytes -= self._size_of(old)
            self._evict_until(self.capacity_bytes - size)
            self._values[key] = value
            self.bytes += size

    def resize(self, capacity_bytes: int) -> None:
        """A new budget; the least recently used go until what is held fits it."""
        with self._lock:
            self.capacity_bytes = capacity_bytes
            self._evict_until(capacity_bytes)

    def _evict_until(self, limit_bytes: int) -> None:
        while self._values and self.bytes > limit_bytes:
            evicted_key, evicted = self._values.popitem(last=False)
            self.bytes -= self._size_of(evicted)
            self.evictions += 1
            self._on_evict(evicted_key)
