"""`flux2-encoder serve` as a team runs it: TLS only, a named tokens file reloaded on SIGHUP, names in the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from encoder_server.cli import main as encoder_main
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import TensorSpec, responses_to_tensor
from tests.certs import Certificates, make_certificates
from tests.test_encoder_cli import READY

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef0"
CAROL = "carol-0123456789abcdef"


@dataclass
class TeamServer:
    process: subprocess.Popen[str]
    port: int
    certs: Certificates
    tokens_file: Path
    log: list[str] = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(self.certs.ca.read_bytes())
        return grpc.secure_channel(f"localhost:{self.port}", credentials)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.log):
            assert time.monotonic() < deadline, f"no log line with {text!r}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def team_server(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    directory = tmp_path_factory.mktemp("team")
    certs = make_certificates(directory)
    tokens_file = directory / "tokens"
    tokens_file.write_text(f"alice {ALICE}\nbob {BOB}\n")
    command = [sys.executable, "-m", "encoder_server.cli", "serve", "--model", str(tiny_snapshot), "--device", "cpu"]
    command += ["--host", "127.0.0.1", "--port", "0", "--tokens-file", str(tokens_file)]
    command += ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.stderr is not None
    try:
        log: list[str] = []
        port = None
        while port is None:
            line = process.stderr.readline()
            assert line, f"server exited before it was ready: {log}"
            log.append(line)
            if match := READY.search(line):
                port = int(match.group(1))
        server = TeamServer(process, port, certs, tokens_file, log)
        threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]
        yield server
    finally:
        process.kill()
        process.wait(10)


def _encode(channel: grpc.Channel, token: str) -> Iterator[encoder_pb2.EncodeResponse]:
    stub = encoder_pb2_grpc.TextEncoderStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    return stub.Encode(encoder_pb2.EncodeRequest(prompts=["a lighthouse"]), metadata=metadata, timeout=60)


def _code(call: Iterator[encoder_pb2.EncodeResponse]) -> grpc.StatusCode:
    try:
        list(call)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_health_command_checks_a_tls_server_with_its_ca(team_server):
    target = f"localhost:{team_server.port}"
    assert encoder_main(["health", target, "--tls-ca", str(team_server.certs.ca)]) == 0
    assert encoder_main(["health", target, "--tls-ca", str(team_server.certs.other_ca)]) == 1


def test_log_line_names_the_caller_and_never_holds_the_token_or_the_prompt(team_server):
    with team_server.channel() as channel:
        assert _code(_encode(channel, BOB)) == grpc.StatusCode.OK
    team_server.wait_for_log("Encode token=bob prompts=1")
    text = "".join(team_server.log)
    assert BOB not in text and ALICE not in text and "a lighthouse" not in text


def test_sighup_swaps_the_tokens_and_a_call_in_flight_completes(team_server):
    spec = TensorSpec("float32", (1, 512, 96))
    with team_server.channel() as channel:
        in_flight = _encode(channel, ALICE)
        header = next(in_flight)  # the call is admitted and streaming; the rest is unread
        team_server.tokens_file.write_text(f"bob {BOB}\ncarol {CAROL}\n")
        team_server.process.send_signal(signal.SIGHUP)
        team_server.wait_for_log("tokens reloaded: 2 names (bob, carol)")
        assert responses_to_tensor([header, *in_flight], spec).shape == spec.shape
        assert _code(_encode(channel, ALICE)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(_encode(channel, CAROL)) == grpc.StatusCode.OK


def test_tokens_file_that_no_longer_parses_keeps_the_previous_tokens(team_server):
    previous = team_server.tokens_file.read_text()
    team_server.tokens_file.write_text("bob\nthis line is broken\n")
    try:
        team_server.process.send_signal(signal.SIGHUP)
        team_server.wait_for_log("kept the previous tokens")
        with team_server.channel() as channel:
            assert _code(_encode(channel, BOB)) == grpc.StatusCode.OK
    finally:
        team_server.tokens_file.write_text(previous)


def test_plain_text_client_cannot_reach_a_tls_server(team_server):
    with grpc.insecure_channel(f"127.0.0.1:{team_server.port}") as channel:
        assert _code(_encode(channel, BOB)) == grpc.StatusCode.UNAVAILABLE
