"""Concurrent requests share forward passes, and each caller gets exactly its own rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from tests.support.helpers import start_server


def test_eight_concurrent_clients_get_their_own_embeddings_in_fewer_passes(tiny_snapshot, diffusers_embeds):
    prompts = [
        f"prompt number {i}: a {color} balloon"
        for i, color in enumerate("red green blue cyan pink gold teal gray".split())
    ]
    with start_server(tiny_snapshot, batch_wait_ms=300, max_batch_size=16) as server:
        encoder = server.wait_ready()
        passes_before = encoder.forward_passes
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda prompt: server.encode([prompt]), prompts))
        passes = encoder.forward_passes - passes_before
    assert passes < len(prompts)
    for prompt, embeds in zip(prompts, results, strict=True):
        torch.testing.assert_close(embeds, diffusers_embeds([prompt]), rtol=0, atol=1e-5)


def test_requests_with_different_layers_share_a_pass_and_keep_their_own_layers(tiny_snapshot, diffusers_embeds):
    calls = [(["a moth"], [10, 20, 30]), (["a lamp"], [2]), (["a door", "a key"], [34, 1])]
    with start_server(tiny_snapshot, batch_wait_ms=300, max_layer=34) as server:
        encoder = server.wait_ready()
        passes_before = encoder.forward_passes
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            results = list(pool.map(lambda call: server.encode(call[0], hidden_state_layers=call[1]), calls))
        assert encoder.forward_passes - passes_before < len(calls)
    for (prompts, layers), embeds in zip(calls, results, strict=True):
        torch.testing.assert_close(embeds, diffusers_embeds(prompts, layers=tuple(layers)), rtol=0, atol=1e-5)


def test_requests_with_different_lengths_run_in_separate_passes(tiny_snapshot, diffusers_embeds):
    calls = [(["a comet"], 512), (["a comet"], 64)]
    with start_server(tiny_snapshot, batch_wait_ms=300) as server:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda call: server.encode(call[0], max_sequence_length=call[1]), calls))
    for (prompts, length), embeds in zip(calls, results, strict=True):
        assert embeds.shape[1] == length
        torch.testing.assert_close(embeds, diffusers_embeds(prompts, max_sequence_length=length), rtol=0, atol=1e-5)


def test_batches_never_exceed_max_batch_size(tiny_snapshot):
    with start_server(tiny_snapshot, batch_wait_ms=300, max_batch_size=4) as server:
        server.wait_ready()
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda i: server.encode([f"p{i}a", f"p{i}b"]), range(6)))
        stats = server.handle.engine.stats
    assert stats.requests == 6
    assert stats.largest_batch <= 4
    assert stats.batches >= 3
