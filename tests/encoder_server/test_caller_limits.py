"""Per-caller limits: one token holder past its calls in flight or its prompts per second gets
RESOURCE_EXHAUSTED (HTTP 503), and the others are served as before."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from encoder_server.config import CallerLimits, ConfigError
from shared.protocol import encoder_pb2
from shared.quotas import CallerQuotas, OverQuotaError
from shared.tokens import parse_tokens
from tests.support.helpers import RunningServer, start_server

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef0"


def _metadata(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def test_tokens_file_line_may_set_the_callers_own_limits():
    entries = parse_tokens(f"alice {ALICE} max_in_flight=2 prompts_per_s=0.5\nbob {BOB}\n", "tokens")
    assert entries["alice"].limits == CallerLimits(max_in_flight=2, prompts_per_s=0.5)
    assert entries["bob"].limits == CallerLimits()


@pytest.mark.parametrize(
    "setting,message",
    [
        ("max_in_flight=0", "max_in_flight must be a positive number"),
        ("prompts_per_s=nan", "prompts_per_s must be a positive number"),
        ("prompts_per_s=inf", "prompts_per_s must be a positive number"),
        ("max_in_flight=1 max_in_flight=2", "max_in_flight is given twice"),
        ("burst=3", "expected `name token` then optional"),
    ],
)
def test_bad_limits_on_a_tokens_line_are_refused_naming_the_line(setting, message):
    with pytest.raises(ConfigError, match=f"line 1: {message}"):
        parse_tokens(f"alice {ALICE} {setting}\nbob {BOB}\n", "tokens")


@pytest.mark.parametrize("limits", [dict(max_in_flight=0), dict(prompts_per_s=float("nan")), dict(prompts_per_s=-1)])
def test_bad_server_wide_caller_limits_are_refused_at_start(limits):
    with pytest.raises(ConfigError, match="--caller-"):
        CallerLimits(**limits)


def test_tokens_line_limits_override_the_server_defaults_field_by_field():
    assert CallerLimits(max_in_flight=2).over(CallerLimits(8, 10.0)) == CallerLimits(2, 10.0)


def test_prompt_bucket_holds_one_full_request_and_refills_at_the_rate():
    quotas = CallerQuotas(lambda caller: CallerLimits(prompts_per_s=100.0), max_request_prompts=16)
    quotas.charge("alice", 100)  # a second's worth
    with pytest.raises(OverQuotaError, match="caller alice is over its 100 prompts/s; retry in"):
        quotas.charge("alice", 16)
    quotas.charge("bob", 16)  # bob has his own bucket
    time.sleep(0.2)  # 20 prompts' worth comes back
    quotas.charge("alice", 16)


def test_caller_whose_bucket_is_empty_is_refused_before_its_call_runs():
    quotas = CallerQuotas(lambda caller: CallerLimits(prompts_per_s=1.0), max_request_prompts=4)
    quotas.charge("alice", 4)
    with pytest.raises(OverQuotaError), quotas.admit("alice"):
        pass


@pytest.fixture(scope="module")
def limited_server(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tokens = tmp_path_factory.mktemp("limits") / "tokens"
    tokens.write_text(f"alice {ALICE} prompts_per_s=0.01\nbob {BOB}\n")
    with start_server(tiny_snapshot, tokens_file=tokens, http_port=0, max_batch_size=4) as server:
        yield server


def test_caller_over_its_prompt_rate_gets_resource_exhausted_and_others_are_served(limited_server):
    request = encoder_pb2.EncodeRequest(prompts=["a", "b", "c", "d"])  # the whole bucket: one full request
    assert list(limited_server.stub.Encode(request, metadata=_metadata(ALICE), timeout=60))
    with pytest.raises(grpc.RpcError) as refused:
        list(limited_server.stub.Encode(request, metadata=_metadata(ALICE), timeout=60))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "caller alice is over its 0.01 prompts/s" in refused.value.details()
    assert list(limited_server.stub.Encode(request, metadata=_metadata(BOB), timeout=60))


def test_caller_over_its_prompt_rate_gets_503_with_retry_after_on_predict(limited_server):
    url = f"http://127.0.0.1:{limited_server.handle.http_port}/predict"
    headers = {"Authorization": f"Bearer {ALICE}"}
    for _ in range(5):  # whatever the earlier test left, the bucket is empty within five
        response = requests.post(url, json={"prompt": "a"}, headers=headers, timeout=30)
        if response.status_code == 503:
            break
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "prompts/s" in response.json()["error"]


class _Gate:
    """Wraps the real encoder: each pass waits until the test opens the gate."""

    def __init__(self, encoder: object) -> None:
        self._encoder = encoder
        self.open = threading.Event()
        self.running = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoder, name)

    def encode_many(self, requests: object) -> object:
        self.running.set()
        assert self.open.wait(30)
        return self._encoder.encode_many(requests)  # type: ignore[attr-defined]


def test_caller_at_its_in_flight_limit_gets_resource_exhausted(tiny_snapshot, limited_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE} max_in_flight=1\nbob {BOB}\n")
    gate = _Gate(limited_server.wait_ready())
    overrides = dict(tokens_file=tokens, warm_up=False, cache_bytes=0)
    with start_server(tiny_snapshot, load_encoder=lambda: gate, **overrides) as server:  # type: ignore[arg-type, return-value]
        request = encoder_pb2.EncodeRequest(prompts=["held"])
        held = threading.Thread(target=lambda: list(server.stub.Encode(request, metadata=_metadata(ALICE), timeout=60)))
        held.start()  # alice's one call in flight, waiting at the gate
        assert gate.running.wait(30)
        with pytest.raises(grpc.RpcError) as refused:
            server.stub.GetInfo(encoder_pb2.GetInfoRequest(), metadata=_metadata(ALICE), timeout=30)
        assert server.stub.GetInfo(encoder_pb2.GetInfoRequest(), metadata=_metadata(BOB), timeout=30).hidden_size
        gate.open.set()
        held.join(60)
        assert server.stub.GetInfo(encoder_pb2.GetInfoRequest(), metadata=_metadata(ALICE), timeout=30).hidden_size
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "caller alice already has 1 calls in flight" in refused.value.details()
