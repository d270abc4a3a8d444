"""A hostile or careless team member against the shared encoder: odd token files, odd headers, odd prompts, and
callers that give up or fail while others wait on the same computation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import requests
import torch

from encoder_server.config import ConfigError, TlsConfig
from encoder_server.model.prompt_encoder import PromptEncoder
from encoder_server.model.request import EncodeRequest
from shared.protocol import encoder_pb2
from shared.tokens import TokenRegistry, parse_tokens
from tests.support.certs import make_certificates
from tests.support.helpers import TINY_EMBED_DIM, RunningServer, start_server

ALICE = "alice-0123456789abcdef"


class GatedEncoder:
    """The real tiny encoder, but each pass waits for `gate` and fails when a prompt is "boom"."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self._encoder = encoder
        self.gate = threading.Event()
        self.running = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoder, name)

    def encode_many(self, requests: Sequence[EncodeRequest]) -> list[torch.Tensor]:
        self.running.set()
        assert self.gate.wait(30)
        if any("boom" in request.prompts for request in requests):
            raise RuntimeError("scripted forward failure")
        return self._encoder.encode_many(requests)


@pytest.fixture(scope="module")
def http_logging_server(tiny_snapshot: Path) -> Iterator[RunningServer]:
    with start_server(tiny_snapshot, http_port=0, log_prompts=True) as server:
        yield server


@pytest.fixture
def gated(tiny_snapshot: Path, http_logging_server: RunningServer) -> Iterator[tuple[RunningServer, GatedEncoder]]:
    encoder = GatedEncoder(http_logging_server.wait_ready())  # the module's model, loaded once
    with start_server(tiny_snapshot, load_encoder=lambda: encoder, batch_wait_ms=1, warm_up=False) as server:  # type: ignore[arg-type, return-value]
        yield server, encoder


def _encode_in_thread(
    server: RunningServer, prompt: str, results: list[object], timeout: float | None = None
) -> threading.Thread:
    """Encode `prompt` on a thread; `results` gets the embeddings, or the status code of a failed call."""

    def call() -> None:
        try:
            if timeout is None:
                results.append(server.encode([prompt]))
            else:  # a caller that gives up after `timeout` seconds
                list(server.stub.Encode(encoder_pb2.EncodeRequest(prompts=[prompt]), timeout=timeout))
        except grpc.RpcError as error:
            results.append(error.code())

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _engine_idle(server: RunningServer) -> tuple[int, int]:
    async def read() -> tuple[int, int]:
        engine = server.handle.engine
        return engine.budget.reserved_bytes, len(engine._flights)

    return server.run(read())


def test_waiters_on_a_shared_prompt_get_their_rows_when_the_first_caller_gives_up(gated):
    server, encoder = gated
    gone: list[object] = []
    first = _encode_in_thread(server, "one prompt, three callers", gone, timeout=0.3)
    encoder.running.wait(10)
    results: list[object] = []
    waiters = [_encode_in_thread(server, "one prompt, three callers", results) for _ in range(2)]
    first.join()
    encoder.gate.set()
    for thread in waiters:
        thread.join()
    assert gone == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert [result.shape for result in results] == [(1, 512, TINY_EMBED_DIM)] * 2  # type: ignore[attr-defined]
    assert _engine_idle(server) == (0, 0)


def test_forward_failure_reaches_every_waiter_and_leaves_nothing_cached(gated):
    server, encoder = gated
    results: list[object] = []
    threads = [_encode_in_thread(server, "boom", results)]
    encoder.running.wait(10)
    threads += [_encode_in_thread(server, "boom", results) for _ in range(2)]
    time.sleep(0.2)  # the two latecomers join the pass in flight
    encoder.gate.set()
    for thread in threads:
        thread.join()
    assert results == [grpc.StatusCode.INTERNAL] * 3
    assert _engine_idle(server) == (0, 0)
    assert server.handle.engine.cache.stats().entries == 0


@pytest.mark.parametrize("text", [f"\ufeffalice {ALICE}\r\n", f"\ufeff{ALICE}\r\n"])
def test_tokens_file_saved_with_a_byte_order_mark_still_lets_its_caller_in(tmp_path, text):
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    registry = TokenRegistry.from_file(path)
    assert registry.identify(f"Bearer {ALICE}") in ("alice", "default")


@pytest.mark.parametrize("token", ["café-0123456789abcdef", "zero\u200bwidth-0123456789abcdef"])
def test_token_no_client_can_send_in_a_header_is_refused_naming_the_line(token):
    with pytest.raises(ConfigError, match="line 2: tokens must be printable ASCII"):
        parse_tokens(f"bob bob-0123456789abcdef0\nalice {token}\n", "tokens")


def test_prompt_with_line_separators_and_terminal_controls_logs_one_safe_line(http_logging_server, caplog):
    prompt = "a\nb\rc\u2028d\u2029e\x85f\x1b[31mg\x9b32mh\u202ei\x7f"
    with caplog.at_level(logging.INFO, logger="flux2-encoder.calls"):
        http_logging_server.encode([prompt])
        deadline = time.monotonic() + 10
        while not any("Encode" in record.getMessage() for record in caplog.records):
            assert time.monotonic() < deadline, "no call log line"
            time.sleep(0.01)
    line = next(record.getMessage() for record in caplog.records if "Encode" in record.getMessage())
    assert len(line.splitlines()) == 1
    assert not any(char in line for char in "\x1b\x85\x9b\u202e\x7f")
    assert r"\u2028" in line and r"\u009b" in line  # escaped, so the prompt can still be read back


@pytest.mark.parametrize(
    "accept",
    ["application/vnd.safetensors;q=0, application/octet-stream", "application/vnd.safetensors;q=0.1, */*;q=0.9"],
)
def test_accept_that_ranks_safetensors_lower_gets_torch_save(http_logging_server, accept):
    url = f"http://127.0.0.1:{http_logging_server.handle.http_port}/predict"
    response = requests.post(url, json={"prompt": "a"}, headers={"Accept": accept}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_other_methods_on_predict_are_405_naming_the_allowed_one(http_logging_server, method):
    url = f"http://127.0.0.1:{http_logging_server.handle.http_port}/predict"
    response = requests.request(method, url, timeout=30)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_tls_key_that_does_not_match_the_certificate_is_refused_at_start_naming_both(tiny_snapshot, tmp_path):
    certs = make_certificates(tmp_path)
    tls = TlsConfig(certs.server_cert, certs.client_key)
    with pytest.raises(ConfigError, match="--tls-key .* is not the private key of --tls-cert"):
        with start_server(tiny_snapshot, load_encoder=lambda: None, wait=False, tls=tls):  # type: ignore[arg-type, return-value]
            pass


def test_logged_prompt_text_is_bounded_whatever_a_request_carried(caplog):
    from encoder_server.observability.calls import MAX_LOGGED_CHARS, MAX_LOGGED_PROMPTS, CallLog
    from encoder_server.observability.metrics import ServerMetrics

    calls = CallLog(ServerMetrics(), log_prompts=True)
    with caplog.at_level("INFO", logger="flux2-encoder.calls"), calls.track("predict", "alice") as call:
        call.prompts = ["x" * 50_000] * 100_000
        call.status = "400"
    (line,) = [record.getMessage() for record in caplog.records if record.name == "flux2-encoder.calls"]
    assert "prompts=100000" in line and f"{100_000 - MAX_LOGGED_PROMPTS} more" in line
    assert len(line) < (MAX_LOGGED_PROMPTS + 1) * (MAX_LOGGED_CHARS + 8) + 200
