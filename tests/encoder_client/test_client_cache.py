"""The client's embedding cache: each (prompt, length, layers) fetched once, bounded in bytes, never aliased."""

from __future__ import annotations

import pytest
import torch

from diffusion_client import RemoteTextEncoder
from diffusion_client.encoder_client.cache import EmbeddingCache
from diffusion_client.generation.cli import main as generate_main
from tests.support.fake_encoder import FakeEncoder, fake_server
from tests.support.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE, prompts_encoded, start_server

ROW_BYTES = 512 * TINY_EMBED_DIM * 4  # one tiny-model prompt: [512, 3 x hidden] float32
MIB = 2**20


@pytest.fixture(scope="module")
def uncached_server(tiny_snapshot):  # type: ignore[no-untyped-def]
    """A server without its own cache, so every prompt the client sends is one the server encodes."""
    with start_server(tiny_snapshot, cache_bytes=0) as server:
        yield server


def test_repeated_prompt_is_fetched_once(uncached_server):
    before = prompts_encoded(uncached_server)
    with RemoteTextEncoder(uncached_server.target, cache_bytes=MIB) as encoder:
        first = encoder.encode("a red fox")
        again = [encoder.encode("a red fox"), *encoder.encode(["a red fox", "a red fox"])]
    assert prompts_encoded(uncached_server) - before == 1
    assert all(torch.equal(embeds.reshape(first.shape), first) for embeds in again)


def test_mixed_hits_and_misses_fetch_only_the_misses_and_equal_the_uncached_result(uncached_server):
    prompts = ["a moth", "a lamp", "a door", "a lamp", "a moth"]
    with RemoteTextEncoder(uncached_server.target) as encoder:
        uncached = encoder.encode(prompts)
    with RemoteTextEncoder(uncached_server.target, cache_bytes=MIB) as encoder:
        encoder.encode(["a lamp"])
        before = prompts_encoded(uncached_server)
        cached = encoder.encode(prompts)
    assert prompts_encoded(uncached_server) - before == 2  # "a moth" and "a door", each once
    assert torch.equal(cached, uncached)


def test_changing_a_result_in_place_does_not_change_the_cache(uncached_server):
    with RemoteTextEncoder(uncached_server.target, cache_bytes=MIB) as encoder:
        fetched = encoder.encode("a comet")
        expected = fetched.clone()
        fetched.zero_()
        hit = encoder.encode("a comet")
        hit.zero_()
        assert torch.equal(encoder.encode("a comet"), expected)


def test_other_length_or_layers_are_other_entries(uncached_server):
    before = prompts_encoded(uncached_server)
    with RemoteTextEncoder(uncached_server.target, cache_bytes=MIB) as encoder:
        shapes = [
            encoder.encode("a kite").shape,
            encoder.encode("a kite", max_sequence_length=64).shape,
            encoder.encode("a kite", layers=(10,)).shape,
        ]
    assert prompts_encoded(uncached_server) - before == 3
    assert shapes == [(1, 512, TINY_EMBED_DIM), (1, 64, TINY_EMBED_DIM), (1, 512, TINY_HIDDEN_SIZE)]


def test_cache_never_holds_more_than_its_budget_and_drops_the_least_recently_used(uncached_server):
    budget = int(2.5 * ROW_BYTES)
    with RemoteTextEncoder(uncached_server.target, cache_bytes=budget) as encoder:
        assert encoder.cache is not None
        for prompt in ["one", "two", "one", "three"]:  # "one" used again, so "two" is the least recent
            encoder.encode(prompt)
            assert encoder.cache.bytes <= budget
        assert len(encoder.cache) == 2
        before = prompts_encoded(uncached_server)
        encoder.encode(["one", "three"])
        assert prompts_encoded(uncached_server) == before
        encoder.encode("two")
        assert prompts_encoded(uncached_server) == before + 1


def test_row_larger_than_the_budget_is_not_kept():
    cache = EmbeddingCache(max_bytes=ROW_BYTES - 1)
    cache.put(("f", "x", 512, (10, 20, 30)), torch.zeros(512, TINY_EMBED_DIM))
    assert len(cache) == 0 and cache.bytes == 0


def test_cache_is_off_by_default(encoder_server):
    with RemoteTextEncoder(encoder_server.target) as encoder:
        assert encoder.cache is None


def test_negative_budget_is_refused():
    with pytest.raises(ValueError, match="cache_bytes must be 0"):
        RemoteTextEncoder("localhost:1", cache_bytes=-1)


def test_generate_fetches_a_prompt_repeated_in_the_prompts_file_once(tiny_snapshot, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "a red fox", "seed": {seed}}}\n' for seed in range(3)))
    servicer = FakeEncoder()
    size = ["--height", "64", "--width", "64", "--steps", "1", "--quiet"]
    with fake_server(servicer) as target:
        code = generate_main(
            ["--prompts", str(prompts), "--encoder", target, "--model", str(tiny_snapshot)]
            + ["--out", str(tmp_path / "fox.png"), *size]
        )
    assert code == 0 and len(list(tmp_path.glob("fox-*.png"))) == 3
    assert servicer.calls == 1
