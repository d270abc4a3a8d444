"""Callers are kept apart: a cache per token name by default, a byte share each, and /metrics that tells an
unauthenticated scraper nothing about callers or the cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

from diffusion_client.encoder_client.client import RemoteTextEncoder
from encoder_server.serving.cache import ReplyCache
from shared.lru import CacheKey
from shared.wire import encode_row
from tests.support.helpers import RunningServer, prompts_encoded, sample_value, start_server

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef0"
METRICS_TOKEN = "scraper-0123456789abcdef"


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("isolation") / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB}\n")
    return path


@pytest.fixture(scope="module")
def team_server(tiny_snapshot: Path, tokens_file: Path) -> Iterator[RunningServer]:
    with start_server(tiny_snapshot, tokens_file=tokens_file, http_port=0) as server:
        yield server


def _encode(server: RunningServer, token: str, prompts: list[str]) -> torch.Tensor:
    with RemoteTextEncoder(server.target, token=token) as encoder:
        return encoder.encode(prompts)


def test_a_prompt_another_caller_encoded_is_computed_again_for_you(team_server):
    alice_embeds = _encode(team_server, ALICE, ["a secret product launch"])
    before = prompts_encoded(team_server)
    bob_embeds = _encode(team_server, BOB, ["a secret product launch"])
    assert prompts_encoded(team_server) == before + 1  # no hit: bob learns nothing from timing
    assert torch.equal(alice_embeds, bob_embeds)
    _encode(team_server, BOB, ["a secret product launch"])
    assert prompts_encoded(team_server) == before + 1  # bob's own entry is a hit


def test_shared_cache_lets_callers_reuse_each_others_work(tiny_snapshot, tokens_file, team_server):
    encoder = team_server.wait_ready()  # the module's model, loaded once
    overrides = dict(tokens_file=tokens_file, shared_cache=True)
    with start_server(tiny_snapshot, load_encoder=lambda: encoder, **overrides) as server:
        _encode(server, ALICE, ["one team, one idea"])
        before = prompts_encoded(server)
        _encode(server, BOB, ["one team, one idea"])
        assert prompts_encoded(server) == before


def _row(value: float) -> object:
    return encode_row(torch.full((512, 192), value))  # one prompt's [L, D] embedding, framed for the wire


def _key(prompt: str) -> CacheKey:
    return CacheKey("fingerprint", prompt, 512, (10, 20, 30))


def test_one_caller_filling_the_cache_cannot_evict_anothers_entries():
    row_bytes = _row(0.0).nbytes  # type: ignore[attr-defined]
    cache = ReplyCache(4 * row_bytes, callers=["alice", "bob"])  # two rows each
    cache.put(cache.scope("alice", _key("alice's")), _row(1.0), "alice")  # type: ignore[arg-type]
    for index in range(10):
        cache.put(cache.scope("bob", _key(f"bob's {index}")), _row(2.0), "bob")  # type: ignore[arg-type]
    assert cache.get(cache.scope("alice", _key("alice's"))) is not None
    assert cache.stats().entries == 3 and cache.stats().bytes <= cache.capacity_bytes


def test_shared_cache_charges_an_entry_to_the_caller_who_computed_it():
    row_bytes = _row(0.0).nbytes  # type: ignore[attr-defined]
    cache = ReplyCache(2 * row_bytes, shared=True, callers=["alice", "bob"])
    cache.put(cache.scope("alice", _key("shared idea")), _row(1.0), "alice")  # type: ignore[arg-type]
    for index in range(5):
        cache.put(cache.scope("bob", _key(f"bob's {index}")), _row(2.0), "bob")  # type: ignore[arg-type]
    assert cache.get(cache.scope("bob", _key("shared idea"))) is not None  # bob finds it, and could not evict it


def test_callers_removed_by_a_reload_lose_their_entries_and_the_rest_get_their_share():
    row_bytes = _row(0.0).nbytes  # type: ignore[attr-defined]
    cache = ReplyCache(4 * row_bytes, callers=["alice", "bob"])
    for caller in ("alice", "bob"):
        for index in range(2):
            cache.put(cache.scope(caller, _key(f"{caller} {index}")), _row(1.0), caller)  # type: ignore[arg-type]
    cache.set_callers(["alice", "bob", "carol", "dave"])  # one row each now
    assert cache.stats().entries == 2
    cache.set_callers(["alice"])
    assert cache.get(cache.scope("bob", _key("bob 1"))) is None
    assert cache.stats().entries == 1 and cache.share_bytes == 4 * row_bytes


def _metrics(server: RunningServer, token: str | None = None) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.get(f"http://127.0.0.1:{server.handle.http_port}/metrics", headers=headers, timeout=30)


def test_open_metrics_show_no_caller_names_and_nothing_about_the_cache(team_server):
    _encode(team_server, ALICE, ["counted, but not named"])
    text = _metrics(team_server).text
    assert 'token="' not in text and "alice" not in text
    assert "cache" not in text
    assert (sample_value(text, "flux2_encoder_requests_total", {"rpc": "Encode", "status": "OK"}) or 0) >= 1


def test_metrics_token_is_required_and_unlocks_caller_and_cache_detail(tiny_snapshot, tokens_file, team_server):
    metrics_token_file = tokens_file.with_name("metrics-token")
    metrics_token_file.write_text(METRICS_TOKEN + "\n")
    encoder = team_server.wait_ready()
    overrides = dict(tokens_file=tokens_file, http_port=0, metrics_token_file=metrics_token_file)
    with start_server(tiny_snapshot, load_encoder=lambda: encoder, **overrides) as server:
        _encode(server, ALICE, ["a detailed view"])
        refused = _metrics(server)
        wrong = _metrics(server, ALICE)  # a caller's token is not the metrics token
        text = _metrics(server, METRICS_TOKEN).text
    assert refused.status_code == wrong.status_code == 401
    assert "--metrics-token-file" in refused.json()["error"]
    labels = {"rpc": "Encode", "status": "OK", "token": "alice"}
    assert sample_value(text, "flux2_encoder_requests_total", labels) == 1
    assert sample_value(text, "flux2_encoder_cache_misses_total") is not None
