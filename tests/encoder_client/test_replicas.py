"""Replicas behind one client: gRPC round robin over those reporting SERVING; a replica killed mid-load costs nothing.

Replicas here run one prompt per pass (`max_batch_size=1`, no batching wait), so every result is bitwise that
prompt's own embedding whichever replica computed it, and results can be compared with `torch.equal`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2

from diffusion_client import RemoteTextEncoder
from diffusion_client.encoder_client.client import log as client_log
from diffusion_client.generation.cli import main as generate_main
from shared.defaults import SERVICE_NAME
from tests.support.cli_runs import EncoderProcess, assert_one_line_error, serve_encoder
from tests.support.fake_encoder import FakeEncoder, fake_server
from tests.support.helpers import TINY_EMBED_DIM, RunningServer, prompts_encoded, start_server

ONE_PROMPT_A_PASS = {"max_batch_size": 1, "batch_wait_ms": 0, "cache_bytes": 0}


@pytest.fixture(scope="module")
def replica(tiny_snapshot: Path) -> Iterator[RunningServer]:
    with start_server(tiny_snapshot, **ONE_PROMPT_A_PASS) as server:
        yield server


@pytest.fixture
def other_replica(encoder_server: RunningServer) -> RunningServer:
    """The session's server, as a second replica where results are only counted, not compared."""
    return encoder_server


def set_health(server: RunningServer, status: int) -> None:
    server.run(server.handle.health.set(SERVICE_NAME, status))


def test_calls_are_spread_round_robin_over_listed_replicas(replica, other_replica):
    before = [prompts_encoded(replica), prompts_encoded(other_replica)]
    with RemoteTextEncoder([replica.target, other_replica.target], timeout=30) as encoder:
        for index in range(6):
            encoder.encode(f"spread {index}")
    served = [prompts_encoded(replica) - before[0], prompts_encoded(other_replica) - before[1]]
    assert sum(served) == 6 and min(served) >= 1, served


def test_replica_reporting_not_serving_gets_no_calls(replica, other_replica):
    set_health(replica, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        before = [prompts_encoded(replica), prompts_encoded(other_replica)]
        with RemoteTextEncoder(f"{replica.target},{other_replica.target}", timeout=30) as encoder:
            for index in range(4):
                encoder.encode(f"health {index}")
        assert [prompts_encoded(replica) - before[0], prompts_encoded(other_replica) - before[1]] == [0, 4]
    finally:
        set_health(replica, health_pb2.HealthCheckResponse.SERVING)


def test_replicas_named_by_host_resolve_to_both(replica, other_replica):
    targets = f"localhost:{replica.handle.port},localhost:{other_replica.handle.port}"
    before = prompts_encoded(replica) + prompts_encoded(other_replica)
    with RemoteTextEncoder(targets, timeout=30) as encoder:
        assert encoder.target == targets
        encoder.encode(["by name"])
    assert prompts_encoded(replica) + prompts_encoded(other_replica) == before + 1


def test_dns_target_reaches_the_server(replica):
    with RemoteTextEncoder(f"dns:///localhost:{replica.handle.port}", timeout=30) as encoder:
        assert encoder.encode("via dns").shape == (1, 512, TINY_EMBED_DIM)


@pytest.mark.parametrize(
    "targets,message",
    [("a:1,", "empty encoder target"), ("a:1,b", "'b' is not host:port"), ("a:1,dns:///b:2", "goes alone")],
)
def test_malformed_replica_list_is_a_value_error(targets, message):
    with pytest.raises(ValueError, match=message):
        RemoteTextEncoder(targets)


def test_generate_with_a_malformed_replica_list_exits_2_in_one_line(tiny_snapshot, capsys):
    code = generate_main(["a cat", "--encoder", "127.0.0.1:1,encoder-b", "--model", str(tiny_snapshot)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "--encoder 127.0.0.1:1,encoder-b", "'encoder-b' is not host:port")


def test_stream_reset_reported_as_internal_is_retried():
    servicer = FakeEncoder(failures=[grpc.StatusCode.INTERNAL], details="Received RST_STREAM with error code 2")
    with fake_server(servicer) as target, RemoteTextEncoder(target, backoff_s=0.01) as encoder:
        assert encoder.encode("x").shape == (1, 512, TINY_EMBED_DIM)
    assert servicer.calls == 2


def test_generate_spreads_a_prompts_file_over_listed_replicas(tiny_snapshot, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {index}\n" for index in range(4)))
    servicers = [FakeEncoder(), FakeEncoder()]
    size = ["--height", "64", "--width", "64", "--steps", "1", "--quiet"]
    with fake_server(servicers[0]) as first, fake_server(servicers[1]) as second:
        code = generate_main(
            ["--prompts", str(prompts), "--encoder", f"{first},{second}", "--model", str(tiny_snapshot)]
            + ["--out", str(tmp_path / "x.png"), *size]
        )
    assert code == 0
    calls = [servicer.calls for servicer in servicers]
    assert sum(calls) == 4 and min(calls) >= 1, calls


def _serve_replica(snapshot: Path) -> EncoderProcess:
    flags = ["--model", str(snapshot), "--host", "127.0.0.1", "--port", "0", "--device", "cpu"]
    return serve_encoder(*flags, "--max-batch-size", "1", "--batch-wait-ms", "0")


class RetryCounter(logging.Handler):
    """Counts the client's retry log lines by status code."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.codes: list[str] = []
        self.details: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and len(record.args) == 3:
            self.codes.append(str(record.args[1]))
            self.details.add(str(record.args[2]))


def test_replica_killed_mid_load_costs_no_request(tiny_snapshot, replica):
    prompts = [f"load {thread} {index}" for thread in range(4) for index in range(3)]  # 4 threads, 3 calls each
    replica_process = _serve_replica(tiny_snapshot)  # boots while the references are computed
    retries = RetryCounter()
    client_log.addHandler(retries)
    client_log.setLevel(logging.DEBUG)
    try:
        with RemoteTextEncoder(replica.target, timeout=60) as encoder:
            expected = {prompt: encoder.encode(prompt) for prompt in prompts}
        port = replica_process.ready_port()
        results: dict[str, torch.Tensor] = {}
        failures: list[BaseException] = []
        with RemoteTextEncoder(f"127.0.0.1:{port},{replica.target}", timeout=60) as encoder:

            def work(mine: list[str]) -> None:
                for prompt in mine:
                    try:
                        results[prompt] = encoder.encode(prompt)
                    except BaseException as error:  # noqa: B036 - reported by the test, not swallowed
                        failures.append(error)

            threads = [threading.Thread(target=work, args=(prompts[i * 3 : i * 3 + 3],)) for i in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while len(results) < 4 and not failures and time.monotonic() < deadline:
                time.sleep(0.01)
            replica_process.process.kill()  # SIGKILL, with calls queued on it and one being computed or sent
            for thread in threads:
                thread.join(120)
        assert not failures, failures
        assert sorted(results) == sorted(prompts)
        assert all(torch.equal(results[prompt], expected[prompt]) for prompt in prompts)
        assert retries.codes, "the kill interrupted no call; the test proved nothing"
        print(f"retries after the kill: {len(retries.codes)} {sorted(set(retries.codes))} {sorted(retries.details)}")
    finally:
        client_log.removeHandler(retries)
        client_log.setLevel(logging.NOTSET)
        replica_process.stop()
