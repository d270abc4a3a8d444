"""The embedding cache: hits are the computed bytes with no forward pass, identical requests share one pass,
and the byte budget holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from encoder_server.serving.cache import CacheStats
from shared.protocol import encoder_pb2
from shared.wire import WIRE_ENCODE_METHOD
from tests.support.helpers import TINY_EMBED_DIM, RunningServer, sample_value, start_server

ROW_BYTES = 512 * TINY_EMBED_DIM * 4  # one tiny float32 embedding: 512 tokens x 3 layers x the hidden size


@pytest.fixture(scope="module")
def cached_server(tiny_snapshot):
    with start_server(tiny_snapshot, batch_wait_ms=50) as server:
        yield server


def raw_reply(server: RunningServer, prompts: list[str]) -> list[bytes]:
    """The Encode reply exactly as sent: each message's bytes, unparsed."""
    call = server.channel.unary_stream(
        WIRE_ENCODE_METHOD, request_serializer=encoder_pb2.EncodeRequest.SerializeToString
    )
    return list(call(encoder_pb2.EncodeRequest(prompts=prompts), timeout=60))


def metric(server: RunningServer, name: str) -> float:
    async def scrape() -> bytes:
        return server.handle.engine.metrics.exposition()

    value = sample_value(server.run(scrape()).decode(), name)
    assert value is not None, f"{name} is not exported"
    return value


def cache_stats(server: RunningServer) -> CacheStats:
    stats = server.background.cache_stats()
    assert stats is not None
    return stats


def test_cache_hit_sends_the_computed_bytes_without_a_forward_pass(cached_server):
    computed = raw_reply(cached_server, ["a lighthouse at dusk"])
    passes, _ = cached_server.background.batch_counts()
    hits = metric(cached_server, "flux2_encoder_cache_hits_total")
    assert raw_reply(cached_server, ["a lighthouse at dusk"]) == computed
    assert cached_server.background.batch_counts()[0] == passes
    assert metric(cached_server, "flux2_encoder_cache_hits_total") == hits + 1


def test_identical_concurrent_requests_run_one_forward_pass(cached_server):
    _, prompts_before = cached_server.background.batch_counts()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: cached_server.encode(["eight people, one idea"]), range(8)))
    assert cached_server.background.batch_counts()[1] == prompts_before + 1
    assert all(torch.equal(result, results[0]) for result in results)


def test_request_mixing_hits_and_misses_computes_only_the_misses(cached_server):
    hit = cached_server.encode(["a red fox"])
    _, prompts_before = cached_server.background.batch_counts()
    both = cached_server.encode(["a red fox", "a blue whale", "a red fox"])
    assert cached_server.background.batch_counts()[1] == prompts_before + 1
    assert torch.equal(both[0], hit[0]) and torch.equal(both[2], hit[0])
    assert torch.allclose(both[1], cached_server.encode(["a blue whale"])[0])


def test_cache_never_holds_more_than_its_byte_budget(tiny_snapshot):
    budget = int(2.5 * ROW_BYTES)
    with start_server(tiny_snapshot, cache_bytes=budget) as server:
        for index in range(6):
            server.encode([f"prompt number {index}"])
            stats = cache_stats(server)
            assert stats.bytes <= budget
        assert stats.entries == 2 and stats.evictions == 4
        assert metric(server, "flux2_encoder_cache_bytes") <= budget


def test_cache_of_zero_bytes_computes_every_request(tiny_snapshot):
    with start_server(tiny_snapshot, cache_bytes=0) as server:
        server.encode(["same prompt"])
        server.encode(["same prompt"])
        assert server.background.batch_counts() == (2, 2)
