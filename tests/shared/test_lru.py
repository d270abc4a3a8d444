"""The byte-bounded LRU both embedding caches build on."""

from __future__ import annotations

from shared.lru import ByteBoundedLRU


def test_least_recently_used_goes_first_and_the_budget_holds():
    cache: ByteBoundedLRU[str, bytes] = ByteBoundedLRU(10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # now "b" is the least recently used
    cache.put("c", b"1234")
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    assert cache.bytes == 8 and cache.evictions == 1 and (cache.hits, cache.misses) == (3, 1)


def test_replacing_a_key_counts_its_bytes_once_and_an_oversized_value_is_not_kept():
    cache: ByteBoundedLRU[str, bytes] = ByteBoundedLRU(10, len)
    cache.put("a", b"12345678")
    cache.put("a", b"12")
    cache.put("big", b"x" * 11)
    assert cache.bytes == 2 and len(cache) == 1 and cache.get("big") is None
